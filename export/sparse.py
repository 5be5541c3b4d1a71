"""Store mostly-zero weights as ONNX sparse initializers (COO, linearized int64 indices).

ONNX Runtime expands sparse initializers to dense tensors at load time, so this saves disk and
download size, not compute (NOTES.md). A value costs 4 bytes and its index 8 (the ONNX checker
requires INT64 indices), so a tensor is stored sparse only when that is smaller: fewer than a
third of its entries non-zero (an int8 tensor: fewer than a ninth).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

KINDS = (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8)


def sparse_bytes(nnz: int, itemsize: int = 4) -> int:
    return nnz * (itemsize + 8)


def to_sparse_initializers(proto: onnx.ModelProto, min_elements: int = 64) -> dict:
    """Move float32 / int8 initializers that are smaller in COO form into
    `graph.sparse_initializer` (in place). Returns {"converted": [names], "dense_bytes": ..,
    "sparse_bytes": ..} of those."""
    graph, keep, converted = proto.graph, [], []
    dense_total = sparse_total = 0
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        nnz = int(np.count_nonzero(arr))
        size = arr.dtype.itemsize
        if (init.data_type not in KINDS or arr.size < min_elements
                or sparse_bytes(nnz, size) >= arr.size * size):
            keep.append(init)
            continue
        flat = arr.reshape(-1)
        idx = np.flatnonzero(flat).astype(np.int64)
        values = numpy_helper.from_array(flat[idx], init.name)
        indices = numpy_helper.from_array(idx, f"{init.name}.indices")
        graph.sparse_initializer.append(
            onnx.helper.make_sparse_tensor(values, indices, list(arr.shape)))
        converted.append(init.name)
        dense_total += arr.size * size
        sparse_total += sparse_bytes(nnz, size)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return {"converted": converted, "dense_bytes": dense_total, "sparse_bytes": sparse_total}

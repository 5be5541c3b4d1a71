"""int8 weights: per-output-channel, symmetric QDQ of the conv/linear weights of an ONNX graph.

Spikes are exactly 0 or 1, so only the weights (and the membrane arithmetic they feed) carry
quantization error; activations stay float32. Each weight initializer W feeding a Conv or Gemm
becomes an int8 initializer plus a `DequantizeLinear` (axis 0, one scale per output channel,
zero point 0) whose output the layer reads. The numbers come from ONNX Runtime's own quantizer
(`onnxruntime.quantization.quant_utils.quantize_data`, symmetric int8 per channel), the graph
edit from `onnx.helper`. A pruned weight stays exactly 0 (symmetric: zero point 0), so sparse
storage still applies to the int8 tensor.

Whether the result is good enough is for the validation gates to say (targets/validation.py):
int8 is kept only where it passes parity and accuracy on the target.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .sparse import to_sparse_initializers

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def _per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scale per output channel) from onnxruntime's quantizer."""
    from onnxruntime.quantization.quant_utils import quantize_data

    q = np.zeros(w.shape, dtype=np.int8)
    scales = np.ones(w.shape[0], dtype=np.float32)
    for o in range(w.shape[0]):
        row = w[o]
        if not np.any(row):
            continue  # a dead channel: all zero, scale 1
        _zp, scale, qrow = quantize_data(row.reshape(-1), TensorProto.INT8, symmetric=True)
        q[o] = np.asarray(qrow, dtype=np.int8).reshape(row.shape)
        scales[o] = np.float32(scale)
    return q, scales


def quantize_weights(proto: onnx.ModelProto, path: Path, *, sparse: bool = True) -> dict:
    """Write `proto` with int8 per-channel QDQ weights to `path`. Returns sizes and counts."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node, k))
    done, new_nodes, fp32_bytes, int8_bytes = [], [], 0, 0
    for name, init in list(inits.items()):
        uses = users.get(name, [])
        if (init.data_type != TensorProto.FLOAT or not uses
                or not all(WEIGHT_INPUT.get(n.op_type) == k for n, k in uses)):
            continue
        w = numpy_helper.to_array(init)
        if w.ndim < 2:
            continue
        if any(n.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1
                                               for a in n.attribute) for n, _ in uses):
            continue  # (in, out) layout: the output channel is axis 1; not what torch writes
        if any(n.op_type == "MatMul" for n, _ in uses):
            continue
        q, scales = _per_channel(w)
        graph.initializer.remove(init)
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{name}_int8"),
            numpy_helper.from_array(scales, f"{name}_scale"),
            numpy_helper.from_array(np.zeros(w.shape[0], dtype=np.int8), f"{name}_zero")])
        new_nodes.append(helper.make_node("DequantizeLinear",
                                          [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                          [name], name=f"{name}_dequantize", axis=0))
        done.append(name)
        fp32_bytes += w.size * 4
        int8_bytes += w.size + 4 * w.shape[0]
    # DequantizeLinear nodes first: their outputs keep the weights' names, so readers are unchanged
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    props = {p.key: p.value for p in proto.metadata_props}
    props["edgeprune.weights"] = "int8 per-channel symmetric (QDQ, onnxruntime.quantization)"
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    info = {"quantized": len(done), "bytes_dense": path.stat().st_size,
            "weight_bytes_fp32": fp32_bytes, "weight_bytes_int8": int8_bytes}
    if sparse:
        to_sparse_initializers(proto)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    info["bytes"] = path.stat().st_size
    return info

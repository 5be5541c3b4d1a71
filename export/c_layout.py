"""Sparse storage of a conv/linear op's weights for the C runtime, chosen by what its input
holds (see export/c_codegen.py): grouped by input for event-driven layers (conv: one row per
(input channel, ky, kx) listing output channels; linear: CSC), by output for dense input
(conv: one row per output channel listing taps; linear: CSR); index arrays in the smallest
unsigned type that holds their values. A conv marked "dense_rows" stores its (input channel,
ky, kx) rows whole (zeros included), padded to a multiple of LANES output channels, whatever
its input: the kernel then updates all output channels of a position in one loop whose length
the compiler knows is a multiple of the vector width (so -O2 vectorizes it). An event conv of
stride 1 on sparse rows stores, instead of each weight's output channel, its offset in the halo
accumulator (`halo`) from its event's position."""
from __future__ import annotations

import numpy as np

from .c_text import uint_type

LANES = 8  # dense rows are padded to this many output channels: 8 floats = one AVX register


def _rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of a 2-d array: (row pointers, column indices, values) of its non-zeros."""
    nz = matrix != 0
    ptr = np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64)
    rows, cols = np.nonzero(nz)
    return ptr, cols.astype(np.int64), matrix[rows, cols].astype(np.float32)


def layout(op: dict) -> dict:
    """Sparse storage of a conv/linear op, chosen by what its input holds."""
    w = op["weight"]
    event = op["in_kind"] != "dense"
    dense_rows = op["kind"] == "conv2d" and bool(op.get("dense_rows"))
    if op["kind"] == "conv2d":
        o, i, kh, kw = w.shape
        if event or dense_rows:  # rows (ci, ky, kx) -> output channels
            m = w.transpose(1, 2, 3, 0).reshape(i * kh * kw, o)
        else:  # rows co -> taps (ci, ky, kx)
            m = w.reshape(o, i * kh * kw)
    else:
        m = w.T if event else w  # CSC for events (rows = input columns), CSR otherwise
    ptr, idx, val = _rows(np.ascontiguousarray(m))
    idx_t, idx_b = uint_type(max(int(m.shape[1]) - 1, 0))
    ptr_t, ptr_b = uint_type(int(ptr[-1]))
    if dense_rows:
        # every row stored whole (zeros included) and padded with zero columns; the row
        # pointers still tell which input channels have no weight at all
        lanes = -(-m.shape[1] // LANES) * LANES
        padded = np.zeros((m.shape[0], lanes), np.float32)
        padded[:, :m.shape[1]] = m
        idx, val = np.zeros(0, np.int64), padded.reshape(-1)
        return {"event": event, "dense_rows": True, "lanes": lanes, "ptr": ptr, "idx": idx,
                "val": val, "nonzero": int(np.count_nonzero(m)), "idx_t": idx_t,
                "ptr_t": ptr_t, "bytes": {"values": 4 * len(val), "indices": idx_b,
                                          "row_pointers": ptr_b * len(ptr)}}
    out = {"event": event, "ptr": ptr, "idx": idx, "val": val, "idx_t": idx_t,
           "ptr_t": ptr_t, "bytes": {"values": 4 * max(len(val), 1),
                                     "indices": idx_b * max(len(idx), 1),
                                     "row_pointers": ptr_b * len(ptr)}}
    if event and op["kind"] == "conv2d" and halo(op):
        # the offsets replace the output-channel indices (the kernel reads only the offsets)
        out.update(_offsets(op, ptr, idx), idx=np.zeros(0, np.int64))
        out["bytes"]["indices"] = out["off_b"] * len(idx)
    return out


def halo(op: dict) -> tuple[int, int] | None:
    """Rows and columns of a stride-1 event conv's accumulator: the output plus a halo of
    (kernel - 1 - padding) on each side, where the taps of events at the border land and are
    dropped, so no event needs a bounds test. None for other strides."""
    if tuple(op["stride"]) != (1, 1):
        return None
    _, _, kh, kw = op["weight"].shape
    return op["in_shape"][1] + kh - 1, op["in_shape"][2] + kw - 1


def _offsets(op: dict, ptr: np.ndarray, idx: np.ndarray) -> dict:
    """Each kept weight's offset in the position-major halo accumulator from its event's own
    position, ((kh-1-ky) * AW + (kw-1-kx)) * O + co, so that every event updates all its
    outputs in one flat loop."""
    o, i, kh, kw = op["weight"].shape
    aw = halo(op)[1]
    row = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))  # the (ci, ky, kx) row of each weight
    ky, kx = (row % (kh * kw)) // kw, row % kw
    off = ((kh - 1 - ky) * aw + (kw - 1 - kx)) * o + idx
    off_t, off_b = uint_type(int(off.max(initial=0)))
    return {"off": off.astype(np.int64), "off_t": off_t, "off_b": off_b}

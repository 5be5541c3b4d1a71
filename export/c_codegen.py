"""C99 code for a C-runtime program (export/c_program.py): computes only non-zero weights and,
after a spiking layer, only the inputs that are non-zero (events).

`write_c(program, folder)` writes into `folder`:
    model.h          the interface: sizes as macros, the context struct, the infer functions
    model.c          the network: one static function per layer, straight-line per-step schedule
    model_weights.c  the weights as `const` arrays (sparse: values + indices + row pointers)
    runner.c         a standalone runner (stdin images -> stdout logits, --bench, --info, --stats)
and returns a summary (files with bytes and sha256, weight bytes, per-layer facts).

Why `const` C arrays rather than a binary blob: the weights land in .rodata (flash on a
microcontroller, shared read-only pages on Linux) with no loader, file I/O, parsing, alignment
or endianness code; the compiler checks their types; and the model is one self-contained
object file. A blob would only matter for swapping weights without recompiling, which a
validated, packaged ticket does not do. Values are written as C99 hexadecimal float literals,
so every float32 round-trips exactly, and the output is byte-for-byte deterministic.

Storage and computation per layer (conv2d / linear):
- input after a LIF layer (spikes, or pooled spikes): EVENT-DRIVEN. Weights are grouped by
  input (conv: one row per (input channel, ky, kx) listing output channels; linear: CSC, one
  row per input column listing output rows). Only non-zero inputs are visited, and each
  scatters value*w into the outputs its non-zero weights reach; for 0/1 spikes the multiply is
  skipped (1.0f*w == w exactly). Input channels whose weights are all pruned are skipped whole.
- dense input (the image in the stem): GATHER over non-zero weights only (conv: one row per
  output channel listing (input channel, ky, kx) taps, each tap a vectorizable sweep over the
  output plane; linear: CSR).
  An event-driven conv whose op has "dense_rows" (c_program.choose_dense_rows: weights at
  least that dense) stores each (input channel, ky, kx) row whole, zeros included: one event
  then updates all output channels in one vectorizable loop (same sums in the same order, so
  the same bits), at 4 bytes per weight slot instead of ~5 per non-zero. Events accumulate
  position-major (HWC) in a scratch buffer, so one event's outputs are adjacent in memory.
Index arrays use the smallest unsigned type that holds their values (uint8/uint16/uint32).
Bias (and step_bias) is added after the sum, as PyTorch's kernels do.

Neurons follow Norse with dt = 1, in the same float32 operation order, so spikes match PyTorch
bit for bit except where a membrane potential lands within rounding of the threshold:
- LIF (lif_box_feed_forward_step): dv = a*((x + v_leak) - v); vd = v + dv; z = vd - v_th > 0
  (i.e. vd > v_th); v = z ? v_reset : vd ("value") or z ? vd - v_th : vd ("subtract").
- LI (li_feed_forward_step): ij = i + x; v' = v + a*((v_leak - v) + ij); i' = ij + (-b)*ij.
- current-based LIF (Norse lif_feed_forward_step): the LI update, then the LIF's spike and reset.
- decay-form LIF (snnTorch Leaky / Synaptic): r = [mem > th]; (syn' = alpha*syn + x;)
  m = beta*mem + (syn' or x) - r*th (or its zero/none reset); z = [m > th].
- integrator: v' = v + x.
Each neuron kind is one NEURONS entry: its state arrays, whether it spikes, its C function.
Compile with -ffp-contract=off (c_build does): a fused multiply-add would change the rounding.

All state lives in a caller-allocatable context struct (no malloc, no I/O in model.c; it needs
only <stdint.h>); `PREFIX_infer` uses a static context and is therefore not reentrant.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

GENERATOR = "edgeprune.c_codegen/1"
LAYER_KINDS = ("conv2d", "linear", "avgpool2d", "maxpool2d", "flatten")
FILES = ("model.h", "model.c", "model_weights.c", "runner.c")


# -- shapes -------------------------------------------------------------------------------------

def output_shape(op: dict, shape: list[int]) -> list[int]:
    """The output shape of `op` for an input of `shape` ((C,H,W) or (N,)); ValueError if the
    input does not fit the op."""
    kind = op["kind"]
    if kind == "conv2d":
        w = op["weight"]
        if len(shape) != 3:
            raise ValueError(f"{op.get('name', kind)} needs a (C,H,W) input, got {list(shape)}")
        o, i, kh, kw = w.shape
        if shape[0] != i:
            raise ValueError(f"{op.get('name', kind)} expects {i} input channels, got {shape[0]}")
        (sh, sw), (ph, pw) = op["stride"], op["padding"]
        oh, ow = (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{op.get('name', kind)}: input {list(shape)} smaller than its kernel")
        return [o, oh, ow]
    if kind == "linear":
        o, i = op["weight"].shape
        n = int(np.prod(shape))
        if len(shape) != 1 or n != i:
            raise ValueError(f"{op.get('name', kind)} expects {i} input features, got "
                             f"{list(shape)}")
        return [o]
    if kind in ("avgpool2d", "maxpool2d"):
        if len(shape) != 3:
            raise ValueError(f"{op.get('name', kind)} needs a (C,H,W) input, got {list(shape)}")
        (kh, kw), (sh, sw) = op["kernel"], op["stride"]
        oh, ow = (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{op.get('name', kind)}: input {list(shape)} smaller than its window")
        return [shape[0], oh, ow]
    if kind == "flatten":
        return [int(np.prod(shape))]
    if kind in NEURONS:
        return list(shape)
    raise ValueError(f"unknown op kind {kind!r}")


# -- program checks -----------------------------------------------------------------------------

def _fail(msg: str):
    raise UserError(f"C program: {msg}")


def _check_array(a, shape: tuple, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        _fail(f"{what} must be a float32 numpy array")
    if tuple(a.shape) != tuple(shape):
        _fail(f"{what} has shape {list(a.shape)}, expected {list(shape)}")
    if not np.isfinite(a).all():
        _fail(f"{what} holds NaN or infinite values")
    return np.ascontiguousarray(a)


def _pos_pair(v, what: str, minimum: int) -> list[int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(i, (int, np.integer)) and i >= minimum for i in v)):
        _fail(f"{what} must be two integers >= {minimum}, got {v!r}")
    return [int(v[0]), int(v[1])]


def plan(program: dict) -> dict:
    """Check `program` and annotate every op with its input/output shape and what its input
    holds: "dense", "binary" (0/1 spikes) or "sparse" (pooled spikes: few non-zeros).
    Returns {"stem": [...], "body": [...], "out_shape": [...]}, each op a dict copy with
    "in_shape", "out_shape", "in_kind", "out_kind" added."""
    if not isinstance(program, dict):
        _fail("must be a dict")
    for key in ("input_shape", "timesteps", "normalize", "stem", "body"):
        if key not in program:
            _fail(f"missing key {key!r}")
    if program.get("encoding", "direct") != "direct":
        _fail(f"encoding {program['encoding']!r} is not supported (direct only)")
    if program.get("readout", "sum") != "sum":
        _fail(f"readout {program['readout']!r} is not supported (sum only)")
    shape = program["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in shape)):
        _fail(f"input_shape must be [C, H, W] of positive integers, got {shape!r}")
    T = program["timesteps"]
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        _fail(f"timesteps must be a positive integer, got {T!r}")
    norm = program["normalize"]
    for key in ("mean", "std"):
        vals = norm.get(key) if isinstance(norm, dict) else None
        if (not isinstance(vals, (list, tuple)) or len(vals) != shape[0]
                or not all(np.isfinite(float(v)) for v in vals)):
            _fail(f"normalize.{key} must be {shape[0]} finite numbers")
    if any(float(s) == 0.0 for s in norm["std"]):
        _fail("normalize.std holds a zero")
    if not program["body"]:
        _fail("body is empty: nothing to run per timestep")
    if not any(op.get("kind") in NEURONS for op in program["body"]):
        _fail("body has no neuron op (" + ", ".join(NEURONS) + ")")

    shape, kind = [int(v) for v in shape], "dense"
    out = {}
    for part in ("stem", "body"):
        ops = []
        for n, op in enumerate(program[part]):
            if not isinstance(op, dict) or op.get("kind") not in LAYER_KINDS + tuple(NEURONS):
                _fail(f"{part}[{n}]: unknown op {op.get('kind') if isinstance(op, dict) else op!r}")
            op = dict(op)
            name = op.setdefault("name", f"{part}.{n}")
            k = op["kind"]
            if part == "stem" and k in NEURONS:
                _fail(f"{name}: neurons belong to the body, not the stem")
            if k in ("conv2d", "linear"):
                w = op.get("weight")
                if not isinstance(w, np.ndarray) or w.ndim != (4 if k == "conv2d" else 2):
                    _fail(f"{name}: weight must be a {'4' if k == 'conv2d' else '2'}-d array")
                op["weight"] = _check_array(w, w.shape, f"{name}.weight")
                nout = w.shape[0]
                if op.get("bias") is not None:
                    op["bias"] = _check_array(op["bias"], (nout,), f"{name}.bias")
                else:
                    op["bias"] = None
                if op.get("step_bias") is not None:
                    if part == "stem":
                        _fail(f"{name}: step_bias is only allowed on body ops (the stem runs once)")
                    sb = op["step_bias"]
                    # (T, O), or for a conv (T, O, OH, OW): per output position (exact
                    # compaction of a padded conv reading constant inputs, export/compact.py)
                    want = (T, nout) if not (k == "conv2d" and getattr(sb, "ndim", 0) == 4) \
                        else (T, nout, *output_shape(op, shape)[1:])
                    op["step_bias"] = _check_array(sb, want, f"{name}.step_bias")
                else:
                    op["step_bias"] = None
                if k == "conv2d":
                    op["stride"] = _pos_pair(op.get("stride"), f"{name}.stride", 1)
                    op["padding"] = _pos_pair(op.get("padding"), f"{name}.padding", 0)
                    if op["padding"][0] >= w.shape[2] or op["padding"][1] >= w.shape[3]:
                        _fail(f"{name}: padding must be smaller than the kernel")
            elif k in ("avgpool2d", "maxpool2d"):
                op["kernel"] = _pos_pair(op.get("kernel"), f"{name}.kernel", 1)
                op["stride"] = _pos_pair(op.get("stride"), f"{name}.stride", 1)
            elif k in NEURONS:
                for check in NEURONS[k].checks:
                    check(op, name)
            try:
                new_shape = output_shape(op, shape)
            except ValueError as e:
                _fail(str(e))
            op.update(in_shape=shape, out_shape=new_shape, in_kind=kind)
            if k in NEURONS:
                kind = "binary" if NEURONS[k].spiking else "dense"
            elif k in ("conv2d", "linear"):
                kind = "dense"
            elif k == "avgpool2d" and kind != "dense":
                kind = "sparse"
            op["out_kind"] = kind
            shape = new_shape
            ops.append(op)
        out[part] = ops
    if len(shape) != 1:
        _fail(f"the body ends with shape {shape}; it must end with per-class values (N,)")
    if program.get("num_classes") not in (None, shape[0]):
        _fail(f"num_classes is {program['num_classes']} but the body gives {shape[0]} values")
    out["out_shape"] = shape
    return out


# -- C text helpers -------------------------------------------------------------------------------

def _uint(maxval: int) -> tuple[str, int]:
    for t, b, lim in (("uint8_t", 1, 0xFF), ("uint16_t", 2, 0xFFFF), ("uint32_t", 4, 0xFFFFFFFF)):
        if maxval <= lim:
            return t, b
    raise UserError(f"C program: an index of {maxval} does not fit 32 bits")


def _hexf(v) -> str:
    v = float(np.float32(v))
    if v == 0.0:
        return "-0.0f" if np.signbit(v) else "0.0f"
    h = v.hex()  # e.g. '-0x1.8000000000000p-1'
    mant, exp = h.split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}f"


def _array(ctype: str, name: str, values, fmt) -> str:
    vals = list(values)
    if not vals:  # C has no zero-length arrays: one unused element
        vals = [0]
    lines = []
    per = 8 if ctype == "float" else 16
    for i in range(0, len(vals), per):
        lines.append("    " + ", ".join(fmt(v) for v in vals[i:i + per]) + ",")
    return f"const {ctype} {name}[{len(vals)}] = {{\n" + "\n".join(lines) + "\n};\n"


def _c_comment(text: str) -> str:
    return text.replace("*/", "* /")


# -- sparse layouts -------------------------------------------------------------------------------

def _rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of a 2-d array: (row pointers, column indices, values) of its non-zeros."""
    nz = matrix != 0
    ptr = np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64)
    rows, cols = np.nonzero(nz)
    return ptr, cols.astype(np.int64), matrix[rows, cols].astype(np.float32)


def _layout(op: dict) -> dict:
    """Sparse storage of a conv/linear op, chosen by what its input holds."""
    w = op["weight"]
    event = op["in_kind"] != "dense"
    if op["kind"] == "conv2d":
        o, i, kh, kw = w.shape
        if event:  # rows (ci, ky, kx) -> output channels
            m = w.transpose(1, 2, 3, 0).reshape(i * kh * kw, o)
        else:  # rows co -> taps (ci, ky, kx)
            m = w.reshape(o, i * kh * kw)
    else:
        m = w.T if event else w  # CSC for events (rows = input columns), CSR otherwise
    ptr, idx, val = _rows(np.ascontiguousarray(m))
    idx_t, idx_b = _uint(max(int(m.shape[1]) - 1, 0))
    ptr_t, ptr_b = _uint(int(ptr[-1]))
    if event and op["kind"] == "conv2d" and op.get("dense_rows"):
        # every row stored whole (zeros included), so an event's update of all output
        # channels is one vectorizable loop; the row pointers still skip empty rows
        idx, val = np.zeros(0, np.int64), np.ascontiguousarray(m, np.float32).reshape(-1)
        return {"event": True, "dense_rows": True, "ptr": ptr, "idx": idx, "val": val,
                "nonzero": int(np.count_nonzero(m)), "idx_t": idx_t, "ptr_t": ptr_t,
                "bytes": {"values": 4 * len(val), "indices": idx_b,
                          "row_pointers": ptr_b * len(ptr)}}
    return {"event": event, "ptr": ptr, "idx": idx, "val": val, "idx_t": idx_t,
            "ptr_t": ptr_t, "bytes": {"values": 4 * max(len(val), 1),
                                      "indices": idx_b * max(len(idx), 1),
                                      "row_pointers": ptr_b * len(ptr)}}


# -- per-layer C functions --------------------------------------------------------------------------

def _bias_code(op: dict, sym: str, nout: int, plane: int) -> str:
    """Add bias (then step_bias[t]) to `out`, `plane` outputs per channel."""
    if op["bias"] is None and op["step_bias"] is None:
        return ""
    terms = []
    if op["bias"] is not None:
        terms.append(f"{sym}_bias[c]")
    if op["step_bias"] is not None and op["step_bias"].ndim == 4 and plane > 1:
        terms.append(f"{sym}_step_bias[(t * {nout} + c) * {plane} + p]")
    elif op["step_bias"] is not None:
        terms.append(f"{sym}_step_bias[t * {nout} + c]")
    body = "".join(f"            o[p] += {term};\n" for term in terms)
    if plane == 1:
        body = "".join(f"        out[c] += {term};\n" for term in terms)
        return f"    for (c = 0; c < {nout}; c++) {{\n{body}    }}\n"
    return (f"    for (c = 0; c < {nout}; c++) {{\n"
            f"        float *o = out + c * {plane};\n"
            f"        for (p = 0; p < {plane}; p++) {{\n{body}        }}\n    }}\n")


def _conv_fn(op: dict, fn: str, sym: str, lay: dict) -> str:
    o, i, kh, kw = op["weight"].shape
    _, h, w = op["in_shape"]
    _, oh, ow = op["out_shape"]
    (sh, sw), (ph, pw) = op["stride"], op["padding"]
    kk, plane = kh * kw, oh * ow
    head = (f"/* {_c_comment(op['name'])}: conv2d {i}->{o}, {kh}x{kw}, stride {sh}x{sw}, "
            f"padding {ph}x{pw}, {h}x{w} -> {oh}x{ow}; {lay.get('nonzero', len(lay['val']))} non-zero weights, "
            f"{'event-driven over ' + op['in_kind'] + ' input' if lay['event'] else 'dense input'} */\n"
            f"static void {fn}(const float *restrict in, float *restrict out, int t)\n{{\n")
    decl = "    int c, p;\n    (void)t;\n"
    zero = f"    for (p = 0; p < {o * plane}; p++) out[p] = 0.0f;\n"
    if lay["event"]:
        # Events accumulate into `acc` laid out position-major (HWC): one event's output
        # channels are then adjacent (a cache line or two) instead of a plane apart; the sums
        # and their order are the same. Transposed into `out` (CHW) at the end.
        head = head.replace("float *restrict out, int t)",
                            "float *restrict out, int t, float *restrict acc_)")
        zero = f"    for (p = 0; p < {o * plane}; p++) acc_[p] = 0.0f;\n"
        acc = "o[idx[k]] += val[k];" if op["in_kind"] == "binary" else \
              "o[idx[k]] += xv * val[k];"
        inner = f"for (k = r[0]; k < r[1]; k++) {acc}"
        if lay.get("dense_rows"):
            term = "wr[co]" if op["in_kind"] == "binary" else "xv * wr[co]"
            inner = (f"if (r[0] != r[1]) {{\n"
                     f"                            const float *wr = val + (c * {kk} + ky * {kw} "
                     f"+ kx) * {o};\n"
                     f"                            int co;\n"
                     f"                            (void)idx;\n"
                     f"                            for (co = 0; co < {o}; co++) o[co] += {term};\n"
                     f"                        }}")
        loop = f"""    for (c = 0; c < {i}; c++) {{
        const {lay['ptr_t']} *rp = {sym}_ptr + c * {kk};
        const float *x = in + c * {h * w};
        int iy, ix;
        if (rp[0] == rp[{kk}]) continue; /* every weight from this channel is pruned */
        for (iy = 0; iy < {h}; iy++) {{
            for (ix = 0; ix < {w}; ix++) {{
                const float xv = x[iy * {w} + ix];
                int ky, kx;
                if (xv == 0.0f) continue;
                for (ky = 0; ky < {kh}; ky++) {{
                    const int ny = iy + {ph} - ky;
                    if (ny < 0) break;
                    if (ny % {sh} != 0 || ny / {sh} >= {oh}) continue;
                    for (kx = 0; kx < {kw}; kx++) {{
                        const int nx = ix + {pw} - kx;
                        const {lay['ptr_t']} *r = rp + ky * {kw} + kx;
                        const {lay['idx_t']} *idx = {sym}_idx;
                        const float *val = {sym}_val;
                        float *o;
                        {lay['ptr_t']} k;
                        if (nx < 0) break;
                        if (nx % {sw} != 0 || nx / {sw} >= {ow}) continue;
                        o = acc_ + ((ny / {sh}) * {ow} + nx / {sw}) * {o};
                        {inner}
                    }}
                }}
            }}
        }}
    }}
    for (c = 0; c < {o}; c++)
        for (p = 0; p < {plane}; p++) out[c * {plane} + p] = acc_[p * {o} + c];
"""
        if op["in_kind"] == "binary":
            loop = loop.replace("const float xv = x[iy * %d + ix];" % w,
                                "const float xv = x[iy * %d + ix]; /* 0 or 1 */" % w)
        return head + decl + zero + loop + _bias_code(op, sym, o, plane) + "}\n"
    loop = f"""    for (c = 0; c < {o}; c++) {{
        float *oc = out + c * {plane};
        {lay['ptr_t']} k;
        for (k = {sym}_ptr[c]; k < {sym}_ptr[c + 1]; k++) {{
            const int tap = (int){sym}_idx[k];
            const float wv = {sym}_val[k];
            const int ci = tap / {kk}, ky = (tap % {kk}) / {kw}, kx = tap % {kw};
            const int y0 = ky < {ph} ? ({ph} - ky + {sh - 1}) / {sh} : 0;
            const int x0 = kx < {pw} ? ({pw} - kx + {sw - 1}) / {sw} : 0;
            int y1 = ({h - 1 + ph} - ky) / {sh} + 1, x1 = ({w - 1 + pw} - kx) / {sw} + 1;
            const float *xc = in + ci * {h * w};
            int oy, ox;
            if (y1 > {oh}) y1 = {oh};
            if (x1 > {ow}) x1 = {ow};
            for (oy = y0; oy < y1; oy++) {{
                const float *xr = xc + (oy * {sh} - {ph} + ky) * {w} - {pw} + kx;
                float *orow = oc + oy * {ow};
                for (ox = x0; ox < x1; ox++) orow[ox] += wv * xr[ox * {sw}];
            }}
        }}
    }}
"""
    # xr may point before the row for ox < x0: the pointer is formed from a valid in-range
    # index only when x0 == 0; keep the arithmetic in int instead.
    loop = loop.replace(
        f"const float *xr = xc + (oy * {sh} - {ph} + ky) * {w} - {pw} + kx;",
        f"const int xb = (oy * {sh} - {ph} + ky) * {w} - {pw} + kx;")
    loop = loop.replace("orow[ox] += wv * xr[ox * %d];" % sw,
                        "orow[ox] += wv * xc[xb + ox * %d];" % sw)
    return head + decl + zero + loop + _bias_code(op, sym, o, plane) + "}\n"


def _linear_fn(op: dict, fn: str, sym: str, lay: dict) -> str:
    o, i = op["weight"].shape
    head = (f"/* {_c_comment(op['name'])}: linear {i}->{o}; {len(lay['val'])} non-zero weights, "
            f"{'event-driven over ' + op['in_kind'] + ' input' if lay['event'] else 'dense input'} */\n"
            f"static void {fn}(const float *restrict in, float *restrict out, int t)\n{{\n"
            f"    int c;\n    {lay['ptr_t']} k;\n    (void)t;\n")
    if lay["event"]:
        acc = "out[{s}_idx[k]] += {s}_val[k];" if op["in_kind"] == "binary" else \
              "out[{s}_idx[k]] += xv * {s}_val[k];"
        loop = (f"    for (c = 0; c < {o}; c++) out[c] = 0.0f;\n"
                f"    for (c = 0; c < {i}; c++) {{\n"
                f"        const float xv = in[c];\n"
                f"        if (xv == 0.0f) continue;\n"
                f"        for (k = {sym}_ptr[c]; k < {sym}_ptr[c + 1]; k++) "
                + acc.format(s=sym) + "\n    }\n")
    else:
        loop = (f"    for (c = 0; c < {o}; c++) {{\n"
                f"        float acc = 0.0f;\n"
                f"        for (k = {sym}_ptr[c]; k < {sym}_ptr[c + 1]; k++) "
                f"acc += {sym}_val[k] * in[{sym}_idx[k]];\n"
                f"        out[c] = acc;\n    }}\n")
    return head + loop + _bias_code(op, sym, o, 1) + "}\n"


def _pool_fn(op: dict, fn: str) -> str:
    c, h, w = op["in_shape"]
    _, oh, ow = op["out_shape"]
    (kh, kw), (sh, sw) = op["kernel"], op["stride"]
    avg = op["kind"] == "avgpool2d"
    if avg:
        init, step, fin = "0.0f", "s += v;", f"s / {float(kh * kw)!r}f"
    else:
        init, step, fin = "x[(oy * %d) * %d + ox * %d]" % (sh, w, sw), \
            "if (v > s || v != v) s = v;", "s"
    return (f"/* {_c_comment(op['name'])}: {op['kind']} {kh}x{kw} stride {sh}x{sw}, "
            f"{c}x{h}x{w} -> {c}x{oh}x{ow} */\n"
            f"static void {fn}(const float *restrict in, float *restrict out)\n{{\n"
            f"    int c, oy, ox, ky, kx;\n"
            f"    for (c = 0; c < {c}; c++) {{\n"
            f"        const float *x = in + c * {h * w};\n"
            f"        float *o = out + c * {oh * ow};\n"
            f"        for (oy = 0; oy < {oh}; oy++) {{\n"
            f"            for (ox = 0; ox < {ow}; ox++) {{\n"
            f"                float s = {init};\n"
            f"                for (ky = 0; ky < {kh}; ky++) {{\n"
            f"                    for (kx = 0; kx < {kw}; kx++) {{\n"
            f"                        const float v = x[(oy * {sh} + ky) * {w} + ox * {sw} + kx];\n"
            f"                        {step}\n"
            f"                    }}\n"
            f"                }}\n"
            f"                o[oy * {ow} + ox] = {fin};\n"
            f"            }}\n"
            f"        }}\n"
            f"    }}\n}}\n")


def _lif_fn(op: dict, fn: str) -> str:
    n = int(np.prod(op["in_shape"]))
    a, th, vr = _hexf(op["tau_mem_inv"]), _hexf(op["v_th"]), _hexf(op["v_reset"])
    after = vr if op["reset"] == "value" else f"vd - {th}"
    return (f"/* {_c_comment(op['name'])}: LIF, {n} neurons, tau_mem_inv {op['tau_mem_inv']!r}, "
            f"v_th {op['v_th']!r}, reset {op['reset']} ({op['v_reset']!r}); returns the spike count.\n"
            f" * Branch-free (spikes are unpredictable), so the compiler can vectorize it. */\n"
            f"static uint32_t {fn}(const float *restrict x, float *restrict z, float *restrict v)\n{{\n"
            f"    uint32_t spikes = 0;\n    int i;\n"
            f"    for (i = 0; i < {n}; i++) {{\n"
            f"        const float dv = {a} * ((x[i] + 0.0f) - v[i]); /* v_leak = 0 */\n"
            f"        const float vd = v[i] + dv;\n"
            f"        const int s = vd - {th} > 0.0f;\n"
            f"        z[i] = s ? 1.0f : 0.0f;\n"
            f"        v[i] = s ? {after} : vd;\n"
            f"        spikes += (uint32_t)s;\n"
            f"    }}\n    return spikes;\n}}\n")


def _li_fn(op: dict, fn: str) -> str:
    n = int(np.prod(op["in_shape"]))
    a, nb = _hexf(op["tau_mem_inv"]), _hexf(-float(np.float32(op["tau_syn_inv"])))
    return (f"/* {_c_comment(op['name'])}: leaky integrator, {n} neurons, tau_mem_inv "
            f"{op['tau_mem_inv']!r}, tau_syn_inv {op['tau_syn_inv']!r} */\n"
            f"static void {fn}(const float *restrict x, float *restrict y, float *restrict v, "
            f"float *restrict cur)\n{{\n    int i;\n"
            f"    for (i = 0; i < {n}; i++) {{\n"
            f"        const float ij = cur[i] + x[i];\n"
            f"        const float dv = {a} * ((0.0f - v[i]) + ij); /* v_leak = 0 */\n"
            f"        const float vn = v[i] + dv;\n"
            f"        const float di = {nb} * ij;\n"
            f"        cur[i] = ij + di;\n        v[i] = vn;\n        y[i] = vn;\n"
            f"    }}\n}}\n")


def _cuba_fn(op: dict, fn: str) -> str:
    n = int(np.prod(op["in_shape"]))
    a, th, vr = _hexf(op["tau_mem_inv"]), _hexf(op["v_th"]), _hexf(op["v_reset"])
    nb = _hexf(-float(np.float32(op["tau_syn_inv"])))
    after = "vd - " + th if op["reset"] == "subtract" else vr
    return (f"/* {_c_comment(op['name'])}: current-based LIF (Norse LIFCell), {n} neurons, "
            f"tau_mem_inv {op['tau_mem_inv']!r}, tau_syn_inv {op['tau_syn_inv']!r}, v_th "
            f"{op['v_th']!r}, reset {op['reset']} ({op['v_reset']!r}); returns the spike count. */\n"
            f"static uint32_t {fn}(const float *restrict x, float *restrict z, float *restrict v, "
            f"float *restrict cur)\n{{\n    uint32_t spikes = 0;\n    int i;\n"
            f"    for (i = 0; i < {n}; i++) {{\n"
            f"        const float ij = cur[i] + x[i];\n"
            f"        const float dv = {a} * ((0.0f - v[i]) + ij); /* v_leak = 0 */\n"
            f"        const float vd = v[i] + dv;\n"
            f"        const float di = {nb} * ij;\n"
            f"        const int s = vd - {th} > 0.0f;\n"
            f"        cur[i] = ij + di;\n"
            f"        z[i] = s ? 1.0f : 0.0f;\n"
            f"        v[i] = s ? {after} : vd;\n"
            f"        spikes += (uint32_t)s;\n"
            f"    }}\n    return spikes;\n}}\n")


def _decay_fn(op: dict, fn: str) -> str:
    """snnTorch's Leaky / Synaptic in its operation order (edgeprune.neurons.DecayLIF); r and
    z are 0/1 floats multiplied in as snnTorch does, so every product is exact."""
    n = int(np.prod(op["in_shape"]))
    beta, th = _hexf(op["beta"]), _hexf(op["threshold"])
    syn = op.get("alpha_syn") is not None
    reset = op["reset"]
    lines = [f"        const float r = mem[i] - {th} > 0.0f ? 1.0f : 0.0f;"]
    if syn:
        lines += [f"        const float sy = {_hexf(op['alpha_syn'])} * syn[i] + x[i];",
                  f"        float m = {beta} * mem[i] + sy;",
                  "        syn[i] = sy;"]
        if reset == "subtract":
            lines.append(f"        m = m - r * {th};")
        elif reset == "zero":
            lines.append("        m = m - m * r;")
    elif reset == "zero":
        lines.append(f"        float m = {beta} * ((1.0f - r) * mem[i]) + x[i];")
    else:
        lines.append(f"        float m = {beta} * mem[i] + x[i];")
        if reset == "subtract":
            lines.append(f"        m = m - r * {th};")
    lines.append(f"        const int s = m - {th} > 0.0f;")
    lines.append("        const float zs = s ? 1.0f : 0.0f;")
    if not op["reset_delay"] and reset != "none":
        lines.append("        const float d = zs - r;")
        lines.append(f"        m = m - d * {th};" if reset == "subtract" else "        m = m - d * m;")
    lines += ["        mem[i] = m;", "        z[i] = zs;", "        spikes += (uint32_t)s;"]
    state = "float *restrict syn, float *restrict mem" if syn else "float *restrict mem"
    return (f"/* {_c_comment(op['name'])}: decay-form LIF (snnTorch {'Synaptic' if syn else 'Leaky'}), "
            f"{n} neurons, beta {op['beta']!r}, threshold {op['threshold']!r}, reset {reset}"
            f"{' one step late' if op['reset_delay'] else ''}; returns the spike count. */\n"
            f"static uint32_t {fn}(const float *restrict x, float *restrict z, {state})\n{{\n"
            f"    uint32_t spikes = 0;\n    int i;\n    for (i = 0; i < {n}; i++) {{\n"
            + "\n".join(lines) + "\n    }\n    return spikes;\n}\n")


def _integrator_fn(op: dict, fn: str) -> str:
    n = int(np.prod(op["in_shape"]))
    return (f"/* {_c_comment(op['name'])}: integrator, {n} neurons */\n"
            f"static void {fn}(const float *restrict x, float *restrict y, float *restrict v)\n"
            f"{{\n    int i;\n    for (i = 0; i < {n}; i++) {{\n"
            f"        v[i] = v[i] + x[i];\n        y[i] = v[i];\n    }}\n}}\n")


def _rate(*keys: str, low: float = 0.0, high: float = 1.0, open_low: bool = True):
    def check(op: dict, name: str) -> None:
        for key in keys:
            v = op.get(key)
            if v is None and key == "alpha_syn":
                continue
            v = float(-1 if v is None else v)
            if not ((low < v if open_low else low <= v) and v <= high):
                _fail(f"{name}: {key} must be in {'(' if open_low else '['}{low}, {high}], got {v}")
    return check


def _finite(*keys: str):
    def check(op: dict, name: str) -> None:
        for key in keys:
            if not np.isfinite(float(op.get(key, np.nan))):
                _fail(f"{name}: {key} must be a finite number")
    return check


def _choice(key: str, choices: tuple):
    def check(op: dict, name: str) -> None:
        if op.get(key) not in choices:
            _fail(f"{name}: {key} must be one of {', '.join(map(repr, choices))}")
    return check


@dataclass(frozen=True)
class NeuronC:
    """One neuron kind in C: its state arrays (each one float per neuron, 0 at the start),
    whether it spikes (0/1 output, counted in ctx->spikes) and its C function
    `fn(x, y, state...)` (returning the spike count when it spikes)."""

    states: tuple[str, ...]
    spiking: bool
    emit: Callable[[dict, str], str]
    checks: tuple = ()


# op kind -> its C form: adding a neuron kind to the C runtime is one entry here (and one in
# export/c_program.py's NEURON_OPS)
NEURONS = {
    "lif": NeuronC(("v",), True, _lif_fn, (_rate("tau_mem_inv"), _finite("v_th", "v_reset"),
                                          _choice("reset", ("value", "subtract")))),
    "li": NeuronC(("v", "i"), False, _li_fn, (_rate("tau_mem_inv", "tau_syn_inv"),)),
    "cuba_lif": NeuronC(("v", "i"), True, _cuba_fn,
                        (_rate("tau_mem_inv", "tau_syn_inv"), _finite("v_th", "v_reset"),
                         _choice("reset", ("value", "subtract")))),
    "decay_lif": NeuronC(("mem",), True, _decay_fn,
                         (_rate("beta", "alpha_syn", open_low=False), _finite("threshold"),
                          _choice("reset", ("subtract", "zero", "none")),
                          _choice("reset_delay", (True, False)))),
    "integrator": NeuronC(("v",), False, _integrator_fn),
}


def _states(op: dict) -> tuple[str, ...]:
    if op["kind"] == "decay_lif" and op.get("alpha_syn") is not None:
        return ("syn", "mem")
    return NEURONS[op["kind"]].states


# -- the files -------------------------------------------------------------------------------------

def _check_prefix(prefix: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,30}", prefix or ""):
        raise UserError(f"C symbol prefix {prefix!r} is not a C identifier")
    return prefix


def generate(program: dict, prefix: str = "edgeprune") -> tuple[dict[str, str], dict]:
    """The C sources (name -> text) and a summary; `write_c` writes them."""
    prefix = _check_prefix(prefix)
    P = prefix.upper()
    p = plan(program)
    C, H, W = (int(v) for v in program["input_shape"])
    T = int(program["timesteps"])
    K = p["out_shape"][0]
    mean = [float(np.float32(v)) for v in program["normalize"]["mean"]]
    std = [float(np.float32(v)) for v in program["normalize"]["std"]]

    # Buffers: the stem ping-pongs between buffers 0 and 1 from the normalized image in 0;
    # its output stays put for all steps while the body ping-pongs between the other two.
    sizes = [C * H * W, 0, 0]
    cur = 0
    for op in p["stem"]:
        src = cur
        if op["kind"] != "flatten":
            cur = 1 - cur
        op["buf_in"], op["buf_out"] = src, cur
        sizes[cur] = max(sizes[cur], int(np.prod(op["out_shape"])))
    pair = [b for b in (0, 1, 2) if b != cur]  # cur: the stem's output, kept for all steps
    for op in p["body"]:
        src = cur
        if op["kind"] != "flatten":
            cur = pair[0] if cur != pair[0] else pair[1]
        op["buf_in"], op["buf_out"] = src, cur
        sizes[cur] = max(sizes[cur], int(np.prod(op["out_shape"])))
    out_buf = cur

    fns, weights_c, layers, struct_fields, schedule_stem, schedule_body = [], [], [], [], [], []
    lif_names, lif_sizes = [], []
    weight_bytes = 0
    scratch = 0  # event-driven convs accumulate position-major here
    externs = []

    def buf(b: int) -> str:
        return f"ctx->buf{b}"

    for part, ops, sched in (("stem", p["stem"], schedule_stem), ("body", p["body"], schedule_body)):
        for n, op in enumerate(ops):
            k, fn = op["kind"], f"{part}_{n}_{op['kind']}"
            info = {"name": op["name"], "part": part, "kind": k, "in_shape": op["in_shape"],
                    "out_shape": op["out_shape"], "input": op["in_kind"]}
            args = f"{buf(op['buf_in'])}, {buf(op['buf_out'])}"
            if k in ("conv2d", "linear"):
                sym = f"{prefix}_{part}{n}"
                lay = _layout(op)
                fns.append((_conv_fn if k == "conv2d" else _linear_fn)(op, fn, sym, lay))
                arrays = [("ptr", lay["ptr_t"], lay["ptr"], str),
                          ("idx", lay["idx_t"], lay["idx"], str),
                          ("val", "float", lay["val"], _hexf)]
                nbytes = dict(lay["bytes"])
                if op["bias"] is not None:
                    arrays.append(("bias", "float", op["bias"], _hexf))
                    nbytes["bias"] = 4 * op["bias"].size
                if op["step_bias"] is not None:
                    arrays.append(("step_bias", "float", op["step_bias"].ravel(), _hexf))
                    nbytes["step_bias"] = 4 * op["step_bias"].size
                weights_c.append(f"/* {_c_comment(op['name'])}: {k} {list(op['weight'].shape)}, "
                                 f"{'by input' if lay['event'] else 'by output'} */\n")
                for suffix, ctype, vals, fmt in arrays:
                    weights_c.append(_array(ctype, f"{sym}_{suffix}", vals, fmt))
                    count = max(len(vals), 1)
                    externs.append(f"extern const {ctype} {sym}_{suffix}[{count}];")
                weights_c.append("\n")
                total = int(op["weight"].size)
                nnz = int(lay.get("nonzero", len(lay["val"])))
                info.update(weights=total, nonzero=nnz, sparsity=1.0 - nnz / total if total else 0.0,
                            mode=("event, dense rows" if lay.get("dense_rows") else "event")
                            if lay["event"] else "dense",
                            index_type=lay["idx_t"], pointer_type=lay["ptr_t"],
                            bytes=sum(nbytes.values()), bytes_detail=nbytes)
                weight_bytes += info["bytes"]
                extra = ""
                if k == "conv2d" and lay["event"]:
                    extra = ", ctx->scratch"
                    scratch = max(scratch, int(np.prod(op["out_shape"])))
                sched.append(f"{fn}({args}, t{extra});" if part == "body"
                             else f"{fn}({args}, 0{extra});")
            elif k in ("avgpool2d", "maxpool2d"):
                fns.append(_pool_fn(op, fn))
                sched.append(f"{fn}({args});")
            elif k == "flatten":
                sched.append(f"/* {op['name']}: flatten (no data movement) */")
            elif k in NEURONS:
                nc, size = NEURONS[k], int(np.prod(op["in_shape"]))
                fns.append(nc.emit(op, fn))
                for st in _states(op):
                    struct_fields.append(f"    float {st}{n}[{size}]; /* "
                                         f"{_c_comment(op['name'])} {st} */")
                state_args = ", ".join(f"ctx->{st}{n}" for st in _states(op))
                info.update(neurons=size, states=len(_states(op)))
                if nc.spiking:
                    li = len(lif_names)
                    sched.append(f"ctx->spikes[{li}] += {fn}({args}, {state_args});")
                    lif_names.append(op["name"])
                    lif_sizes.append(size)
                    info.update(spike_index=li)
                else:
                    sched.append(f"{fn}({args}, {state_args});")
            layers.append(info)

    norm_bytes = 8 * C
    weight_bytes += norm_bytes
    L = len(lif_names)
    state_resets = []
    for op_n, op in enumerate(p["body"]):
        if op["kind"] in NEURONS:
            state_resets += [f"{st}{op_n}" for st in _states(op)]

    def fmt_list(vals) -> str:
        return ", ".join(str(v) for v in vals)

    summary_comment = "\n".join(
        f" *   {l['name']:<14} {l['kind']:<10} {str(l['in_shape']):>14} -> {str(l['out_shape']):<14}"
        + (f" {l['nonzero']}/{l['weights']} weights ({l['mode']})" if "weights" in l else "")
        for l in layers)
    header = f"""/* Generated by {GENERATOR}: do not edit.
 * Spiking network, direct encoding, T = {T} timesteps, input {C}x{H}x{W} float32 in [0, 1]
 * (normalized inside), {K} logits = the last layer's output summed over the T steps.
 * Layers:
{_c_comment(summary_comment)}
 */
#ifndef {P}_MODEL_H
#define {P}_MODEL_H

#include <stdint.h>

#define {P}_INPUT_C {C}
#define {P}_INPUT_H {H}
#define {P}_INPUT_W {W}
#define {P}_INPUT_SIZE {C * H * W}
#define {P}_NUM_CLASSES {K}
#define {P}_TIMESTEPS {T}
#define {P}_NUM_SPIKING_LAYERS {L}
#define {P}_WEIGHT_BYTES {weight_bytes}

/* Everything one inference touches: activations and neuron state. Allocate it anywhere
 * (static, stack, heap); {prefix}_infer_ctx resets the state itself. */
typedef struct {{
    float buf0[{max(sizes[0], 1)}];
    float buf1[{max(sizes[1], 1)}];
    float buf2[{max(sizes[2], 1)}];
{chr(10).join(struct_fields)}
    float scratch[{max(scratch, 1)}]; /* event-driven convs: position-major accumulator */
    uint32_t spikes[{max(L, 1)}]; /* spikes per LIF layer in the last inference (all steps) */
}} {prefix}_ctx;

/* Run one image (C*H*W floats, channel-major, [0, 1] pixels) and write NUM_CLASSES logits.
 * Returns 0, or -1 if a pointer is NULL. */
int {prefix}_infer_ctx({prefix}_ctx *ctx, const float *image, float *logits);

/* The same with a static context: not reentrant, not thread-safe. */
int {prefix}_infer(const float *image, float *logits);

/* Name and neuron count of each LIF layer (index = position in ctx->spikes). */
extern const char *const {prefix}_spiking_layer_names[{max(L, 1)}];
extern const uint32_t {prefix}_spiking_layer_neurons[{max(L, 1)}];

#endif
"""
    names_init = ", ".join(json.dumps(n) for n in lif_names) or "\"\""
    model_c = f"""/* Generated by {GENERATOR}: do not edit. See model.h.
 * Build with -std=c99 -ffp-contract=off: fusing a multiply and an add changes the rounding
 * that spikes are compared against. */
#include "model.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* weights (model_weights.c) */
{chr(10).join(externs)}

static const float mean_[{C}] = {{{", ".join(_hexf(v) for v in mean)}}};
static const float std_[{C}] = {{{", ".join(_hexf(v) for v in std)}}};

const char *const {prefix}_spiking_layer_names[{max(L, 1)}] = {{{names_init}}};
const uint32_t {prefix}_spiking_layer_neurons[{max(L, 1)}] = {{{fmt_list(lif_sizes) or "0"}}};

{chr(10).join(fns)}
int {prefix}_infer_ctx({prefix}_ctx *ctx, const float *image, float *logits)
{{
    int i, c, t;
    if (!ctx || !image || !logits) return -1;
    for (i = 0; i < {max(L, 1)}; i++) ctx->spikes[i] = 0;
{"".join(f"    for (i = 0; i < (int)(sizeof ctx->{s} / sizeof ctx->{s}[0]); i++) ctx->{s}[i] = 0.0f;{chr(10)}" for s in state_resets)}    for (i = 0; i < {K}; i++) logits[i] = 0.0f;
    /* normalization: (x - mean) / std per channel */
    for (c = 0; c < {C}; c++)
        for (i = 0; i < {H * W}; i++)
            ctx->buf0[c * {H * W} + i] = (image[c * {H * W} + i] - mean_[c]) / std_[c];
    /* stem: once */
{"".join(f"    {s}{chr(10)}" for s in schedule_stem)}    /* body: every timestep */
    for (t = 0; t < {T}; t++) {{
{"".join(f"        {s}{chr(10)}" for s in schedule_body)}        for (i = 0; i < {K}; i++) logits[i] += ctx->buf{out_buf}[i];
    }}
    return 0;
}}

int {prefix}_infer(const float *image, float *logits)
{{
    static {prefix}_ctx ctx;
    return {prefix}_infer_ctx(&ctx, image, logits);
}}
"""
    weights = (f"/* Generated by {GENERATOR}: do not edit. Weights of model.c, sparse: per layer\n"
               " * row pointers (ptr), indices (idx) and float32 values (val), C99 hex floats. */\n"
               "#include <stdint.h>\n\n" + "".join(weights_c))
    sources = {"model.h": header, "model.c": model_c, "model_weights.c": weights,
               "runner.c": RUNNER_C.replace("PREFIX_", f"{prefix}_").replace("PFX_", f"{P}_")}
    summary = {"generator": GENERATOR, "prefix": prefix, "input_shape": [C, H, W],
               "num_classes": K, "timesteps": T, "weight_bytes": weight_bytes,
               "normalize_bytes": norm_bytes,
               "state_bytes": 4 * sum(l.get("neurons", 0) * l.get("states", 0) for l in layers),
               "buffer_bytes": 4 * sum(max(s, 1) for s in sizes) + 4 * max(scratch, 1),
               "spiking_layers": lif_names, "layers": layers}
    return sources, summary


def write_c(program: dict, folder, *, prefix: str = "edgeprune") -> dict:
    """Write model.h, model.c, model_weights.c and runner.c for `program` into `folder`
    (created if missing). Deterministic: the same program gives the same bytes.
    Returns the summary of `generate` plus "files": {name: {"bytes", "sha256"}} and "folder"."""
    sources, summary = generate(program, prefix)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in FILES:
        data = sources[name].encode()
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    summary.update(folder=str(folder), files=files)
    return summary


# -- the standalone runner ----------------------------------------------------------------------------

RUNNER_C = r"""/* Standalone runner for the generated model (see model.h). Generated by edgeprune.
 *   runner                      stdin: N images (C*H*W float32 little-endian each);
 *                               stdout: N x NUM_CLASSES float32 little-endian logits
 *   runner --bench RUNS WARMUP  stdin: one or more images; stdout: JSON per-run latencies (ms,
 *                               CLOCK_MONOTONIC) of RUNS inferences after WARMUP untimed ones
 *   runner --stats              stdin: images; stdout: JSON spike counts per LIF layer
 *   runner --info               stdout: JSON sizes of the model
 * Bad input (empty, not a whole number of images) or arguments: one line on stderr, exit 2. */
#define _POSIX_C_SOURCE 199309L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

#define IMAGE_FLOATS ((size_t)PFX_INPUT_SIZE)
#define IMAGE_BYTES (IMAGE_FLOATS * 4u)

static int fail(const char *what)
{
    fprintf(stderr, "runner: %s\n", what);
    return 2;
}

static int little_endian(void)
{
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void swap4(void *data, size_t count)
{
    unsigned char *p = (unsigned char *)data, t;
    size_t i;
    for (i = 0; i < count; i++, p += 4) {
        t = p[0]; p[0] = p[3]; p[3] = t;
        t = p[1]; p[1] = p[2]; p[2] = t;
    }
}

/* All of stdin; NULL with *err set on failure. */
static unsigned char *read_all(size_t *size, const char **err)
{
    size_t cap = 1u << 16, n = 0;
    unsigned char *buf = (unsigned char *)malloc(cap), *grown;
    if (!buf) { *err = "out of memory"; return NULL; }
    for (;;) {
        size_t got;
        if (n == cap) {
            if (cap > ((size_t)-1) / 2) { free(buf); *err = "input too large"; return NULL; }
            grown = (unsigned char *)realloc(buf, cap * 2);
            if (!grown) { free(buf); *err = "out of memory reading stdin"; return NULL; }
            buf = grown;
            cap *= 2;
        }
        got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin)) { free(buf); *err = "cannot read stdin"; return NULL; }
            break;
        }
    }
    *size = n;
    return buf;
}

/* stdin as whole images (float32, host order); returns the count, 0 after printing an error. */
static size_t read_images(float **images)
{
    const char *err = NULL;
    char msg[160];
    size_t size = 0, count;
    unsigned char *raw = read_all(&size, &err);
    if (!raw) { fail(err); return 0; }
    if (size == 0) { free(raw); fail("empty input: expected float32 images on stdin"); return 0; }
    if (size % IMAGE_BYTES != 0) {
        free(raw);
        sprintf(msg, "input is %lu bytes, not a whole number of %lu-byte images (%dx%dx%d float32)",
                (unsigned long)size, (unsigned long)IMAGE_BYTES, PFX_INPUT_C, PFX_INPUT_H,
                PFX_INPUT_W);
        fail(msg);
        return 0;
    }
    count = size / IMAGE_BYTES;
    if (!little_endian()) swap4(raw, count * IMAGE_FLOATS);
    *images = (float *)(void *)raw; /* malloc'd memory is aligned for float */
    return count;
}

static int parse_count(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int infer_all(void)
{
    float *images = NULL, logits[PFX_NUM_CLASSES];
    size_t n = read_images(&images), i;
    static PREFIX_ctx ctx;
    if (n == 0) return 2;
    for (i = 0; i < n; i++) {
        PREFIX_infer_ctx(&ctx, images + i * IMAGE_FLOATS, logits);
        if (!little_endian()) swap4(logits, PFX_NUM_CLASSES);
        if (fwrite(logits, sizeof logits, 1, stdout) != 1) {
            free(images);
            return fail("cannot write stdout");
        }
    }
    free(images);
    if (fflush(stdout) != 0) return fail("cannot write stdout");
    return 0;
}

static int bench(const char *runs_s, const char *warmup_s)
{
    long runs, warmup, r;
    float *images = NULL, logits[PFX_NUM_CLASSES];
    double *ms, sink = 0.0;
    size_t n;
    static PREFIX_ctx ctx;
    if (!parse_count(runs_s, 1, 10000000L, &runs) || !parse_count(warmup_s, 0, 10000000L, &warmup))
        return fail("--bench RUNS WARMUP: RUNS must be 1..10000000, WARMUP 0..10000000");
    n = read_images(&images);
    if (n == 0) return 2;
    ms = (double *)malloc((size_t)runs * sizeof *ms);
    if (!ms) { free(images); return fail("out of memory"); }
    for (r = 0; r < warmup; r++) PREFIX_infer_ctx(&ctx, images + ((size_t)r % n) * IMAGE_FLOATS, logits);
    for (r = 0; r < runs; r++) {
        double t0 = now_ms();
        PREFIX_infer_ctx(&ctx, images + ((size_t)r % n) * IMAGE_FLOATS, logits);
        ms[r] = now_ms() - t0;
        sink += logits[0];
    }
    printf("{\"runs\": %ld, \"warmup\": %ld, \"images\": %lu, \"clock\": \"CLOCK_MONOTONIC\", "
           "\"checksum\": %.9g, \"latency_ms\": [", runs, warmup, (unsigned long)n, sink);
    for (r = 0; r < runs; r++) printf("%s%.6f", r ? ", " : "", ms[r]);
    printf("]}\n");
    free(ms);
    free(images);
    return fflush(stdout) == 0 ? 0 : fail("cannot write stdout");
}

static int stats(void)
{
    float *images = NULL, logits[PFX_NUM_CLASSES];
    size_t n = read_images(&images), i;
    static PREFIX_ctx ctx;
    static double total[PFX_NUM_SPIKING_LAYERS + 1];
    int l;
    if (n == 0) return 2;
    for (i = 0; i < n; i++) {
        PREFIX_infer_ctx(&ctx, images + i * IMAGE_FLOATS, logits);
        for (l = 0; l < PFX_NUM_SPIKING_LAYERS; l++) total[l] += ctx.spikes[l];
    }
    printf("{\"images\": %lu, \"timesteps\": %d, \"layers\": [", (unsigned long)n, PFX_TIMESTEPS);
    for (l = 0; l < PFX_NUM_SPIKING_LAYERS; l++)
        printf("%s{\"name\": \"%s\", \"neurons\": %lu, \"spikes\": %.0f}", l ? ", " : "",
               PREFIX_spiking_layer_names[l], (unsigned long)PREFIX_spiking_layer_neurons[l], total[l]);
    printf("]}\n");
    free(images);
    return fflush(stdout) == 0 ? 0 : fail("cannot write stdout");
}

int main(int argc, char **argv)
{
    if (argc == 1) return infer_all();
    if (argc == 2 && strcmp(argv[1], "--info") == 0) {
        printf("{\"input_shape\": [%d, %d, %d], \"num_classes\": %d, \"timesteps\": %d, "
               "\"spiking_layers\": %d, \"weight_bytes\": %lu, \"context_bytes\": %lu}\n",
               PFX_INPUT_C, PFX_INPUT_H, PFX_INPUT_W, PFX_NUM_CLASSES, PFX_TIMESTEPS,
               PFX_NUM_SPIKING_LAYERS, (unsigned long)PFX_WEIGHT_BYTES,
               (unsigned long)sizeof(PREFIX_ctx));
        return fflush(stdout) == 0 ? 0 : fail("cannot write stdout");
    }
    if (argc == 2 && strcmp(argv[1], "--stats") == 0) return stats();
    if (argc == 4 && strcmp(argv[1], "--bench") == 0) return bench(argv[2], argv[3]);
    return fail("usage: runner [--bench RUNS WARMUP | --stats | --info] < images.f32");
}
"""

"""The checked plan of a C-runtime program (export/c_program.py): every op's shapes and what
its input holds, before any C is written (export/c_codegen.py)."""
from __future__ import annotations

import numpy as np

from edgeprune.errors import UserError
from edgeprune.neuron_kinds import KINDS

from .c_neurons import C_NEURONS

POOLS = ("avgpool2d", "sumpool2d", "maxpool2d")


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
    if kind in POOLS:
        if len(shape) != 3:
            raise ValueError(f"{op.get('name', kind)} needs a (C,H,W) input, got {list(shape)}")
        (kh, kw), (sh, sw) = op["kernel"], op["stride"]
        oh, ow = (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{op.get('name', kind)}: input {list(shape)} smaller than its window")
        return [shape[0], oh, ow]
    if kind == "flatten":
        return [int(np.prod(shape))]
    if kind in C_NEURONS:
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


def _neuron_params(op: dict, name: str):
    """A neuron op's parameters, validated by its kind (the fields its C form reads)."""
    missing = [k for k in C_NEURONS[op["kind"]].keys if k not in op]
    if missing:
        _fail(f"{name}: missing {', '.join(missing)}")
    try:
        return KINDS[op["kind"]].params(**{k: op[k] for k in C_NEURONS[op["kind"]].keys})
    except UserError as e:
        _fail(f"{name}: {e}")


def _check_weighted(op: dict, name: str, part: str, shape: list[int], T: int) -> None:
    k = op["kind"]
    w = op.get("weight")
    if not isinstance(w, np.ndarray) or w.ndim != (4 if k == "conv2d" else 2):
        _fail(f"{name}: weight must be a {'4' if k == 'conv2d' else '2'}-d array")
    op["weight"] = _check_array(w, w.shape, f"{name}.weight")
    nout = w.shape[0]
    op["bias"] = None if op.get("bias") is None else \
        _check_array(op["bias"], (nout,), f"{name}.bias")
    if k == "conv2d":
        op["stride"] = _pos_pair(op.get("stride"), f"{name}.stride", 1)
        op["padding"] = _pos_pair(op.get("padding"), f"{name}.padding", 0)
        if op["padding"][0] >= w.shape[2] or op["padding"][1] >= w.shape[3]:
            _fail(f"{name}: padding must be smaller than the kernel")
    sb = op.get("step_bias")
    if sb is not None:
        if part == "stem":
            _fail(f"{name}: step_bias is only allowed on body ops (the stem runs once)")
        # (T, O), or for a conv (T, O, OH, OW): per output position (exact compaction of a
        # padded conv reading constant inputs, export/compact.py)
        want = (T, nout) if not (k == "conv2d" and getattr(sb, "ndim", 0) == 4) \
            else (T, nout, *output_shape(op, shape)[1:])
        sb = _check_array(sb, want, f"{name}.step_bias")
    op["step_bias"] = sb


def _check_pool(op: dict, name: str, part: str, shape: list[int], T: int) -> None:
    op["kernel"] = _pos_pair(op.get("kernel"), f"{name}.kernel", 1)
    op["stride"] = _pos_pair(op.get("stride"), f"{name}.stride", 1)


def _check_neuron(op: dict, name: str, part: str, shape: list[int], T: int) -> None:
    if part == "stem":
        _fail(f"{name}: neurons belong to the body, not the stem")
    op["params"] = _neuron_params(op, name)


# op kind -> check(op copy, name, part, input shape, T): validates and normalizes the op
CHECKS = {"conv2d": _check_weighted, "linear": _check_weighted, **{k: _check_pool for k in POOLS},
          "flatten": lambda *args: None,
          **{k: _check_neuron for k in C_NEURONS}}


def _out_kind(k: str, in_kind: str) -> str:
    """What an op's output holds, given what its input holds."""
    if k in C_NEURONS:
        return "binary" if KINDS[k].spiking else "dense"
    if k in ("conv2d", "linear"):
        return "dense"
    return "sparse" if k in ("avgpool2d", "sumpool2d") and in_kind != "dense" else in_kind


def _check_program(program: dict) -> None:
    """The program's own fields (not its ops)."""
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
    if not any(op.get("kind") in C_NEURONS for op in program["body"]):
        _fail("body has no neuron op (" + ", ".join(C_NEURONS) + ")")


def plan(program: dict) -> dict:
    """Check `program` and annotate every op with its input/output shape and what its input
    holds: "dense", "binary" (0/1 spikes) or "sparse" (pooled spikes: few non-zeros).
    Returns {"stem": [...], "body": [...], "out_shape": [...]}, each op a dict copy with
    "in_shape", "out_shape", "in_kind", "out_kind" added (and a neuron's "params")."""
    _check_program(program)
    T = program["timesteps"]
    shape, kind = [int(v) for v in program["input_shape"]], "dense"
    out = {}
    for part in ("stem", "body"):
        ops = []
        for n, op in enumerate(program[part]):
            if not isinstance(op, dict) or op.get("kind") not in CHECKS:
                _fail(f"{part}[{n}]: unknown op {op.get('kind') if isinstance(op, dict) else op!r}")
            op = dict(op)
            name = op.setdefault("name", f"{part}.{n}")
            CHECKS[op["kind"]](op, name, part, shape, T)
            try:
                new_shape = output_shape(op, shape)
            except ValueError as e:
                _fail(str(e))
            op.update(in_shape=shape, out_shape=new_shape, in_kind=kind)
            kind = op["out_kind"] = _out_kind(op["kind"], kind)
            shape = new_shape
            ops.append(op)
        out[part] = ops
    if len(shape) != 1:
        _fail(f"the body ends with shape {shape}; it must end with per-class values (N,)")
    if program.get("num_classes") not in (None, shape[0]):
        _fail(f"num_classes is {program['num_classes']} but the body gives {shape[0]} values")
    out["out_shape"] = shape
    return out

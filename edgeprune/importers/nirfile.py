"""A NIR graph (`.nir`, HDF5) as an edgeprune layer list. The file is data: it is read with
h5py dataset by dataset (no pickle, no code, no links to other files, bounded sizes), never
through a NIR backend, and anything this reader cannot represent is refused naming the node.

What a graph may hold: one Input, one Output and a chain of nodes between them (each node fed by
the one before; NIR sums edges that meet, which only residual graphs need, and those are
refused). Node types and what they become (edgeprune.layers kinds):

    Affine / Linear            linear (with / without bias)
    Conv1d / Conv2d            conv1d / conv2d (zero padding given as numbers)
    Flatten                    flatten (NIR dims exclude the batch: start_dim 0 is ours 1)
    SumPool2d (+ Scale 1/k²)   avgpool2d; a SumPool2d alone is a sum: sumpool2d
    AvgPool2d                  avgpool2d
    Scale                      scale (one value, or one per feature)
    Threshold                  threshold (stateless spikes)
    LIF                        lif, or decay_lif under the snnTorch convention
    CubaLIF                    cuba_lif, or decay_lif with a synaptic current (snnTorch)
    IF                         decay_lif with beta 1, reset to zero at the spike
    LI                         li (no synaptic current)
    I (Integrator)             integrator
    Identity                   nothing
A parameter may be a scalar or one value per neuron; the values of one node must be equal.
Missing shapes (a Conv2d's input_shape, Flatten's input_type, the Output's) are inferred from
the Input shape along the chain.

Neuron semantics. NIR gives continuous equations and no time step. They are discretized with
`dt` by forward Euler, the way NIR's reference simulations and Norse's reader do it: the
synaptic current first, then the membrane, a spike where v > v_threshold and the reset to
v_reset in the same step. With a = dt/tau (must be in (0, 1]):
    LIF      v' = v + a·((v_leak − v) + r·I)            -> lif, tau_mem_inv a, input gain r
    CubaLIF  I' = I + b·(w_in·S − I); v' = v + a·(r·I' − v)
                                                         -> cuba_lif, input gain r·w_in·b
    IF       v' = v + dt·r·I                             -> decay_lif (beta 1), gain dt·r
A gain that is not 1 becomes a Scale layer before the neuron. v_leak must be 0.
Conventions (`--convention`, else the graph's metadata, else the writer's fingerprint
(written_by: snnTorch's r = tau/1e-4, Rockpool's and SpikingJelly's node names), else "nir"; a
graph that looks Sinabs-written (IF with r = 1, nodes named by position) must name one):
    nir / norse   the equations above; dt defaults to the graph's metadata "dt", else Norse's
                  1e-3 under "norse", else it must be given
    snntorch      snnTorch's own arithmetic (beta = 1 − dt/tau, alpha = 1 − dt/tau_syn,
                  input gain r·dt/tau, 1 as snnTorch writes it) and its reset: subtract the
                  threshold one step after a spike. dt 1e-4, as snnTorch writes.
    sinabs        IF / LIF as Sinabs' IAF / LIF with their layer defaults (multi-spike output,
                  subtractive reset, LIF's norm_input, alpha = exp(−1/tau)): sinabs_lif; dt 1
    spikingjelly  IF / LIF as SpikingJelly's IFNode / LIFNode (charge, spike at >= threshold,
                  hard reset; decay_input from r): charge_lif; dt 1e-4
    rockpool      the Input's batch/time dimensions dropped; CubaLIF as Rockpool's LIFTorch
                  (alpha = exp(−dt/tau) as Rockpool computes it, r = tau·alpha/dt checked,
                  v_leak as the bias, which Rockpool's to_nir writes as 0): rockpool_lif;
                  dt 1e-3
    edgeprune     what edgeprune's exporter writes: the metadata's dt, and each neuron's exact
                  description in its node metadata ("edgeprune.layer"), so a round trip is exact.
Under sinabs, spikingjelly and rockpool any other neuron node is refused (FRAMEWORK_READERS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import layers
from ..bounded_read import MiB, Budget, regular_size
from ..config import NIR_CONVENTIONS, NeuronParams
from ..errors import UserError
from ..neuron_kinds import (ChargeParams, CubaParams, DecayParams, LIParams, RockpoolParams,
                            SinabsParams)

CONVENTIONS = NIR_CONVENTIONS
DEFAULT_DT = {"norse": 1e-3, "snntorch": 1e-4, "sinabs": 1.0, "spikingjelly": 1e-4,
              "rockpool": 1e-3}
# the conventions of frameworks whose neurons are not NIR's equations: a neuron node they write
# is read by FRAMEWORK_READERS, or refused
FRAMEWORKS = ("sinabs", "spikingjelly", "rockpool")
# What reading the whole file may cost, counted from each dataset's declared shape and type
# before it is read: numbers, and bytes (a fixed-length string is one element of any size). A
# VGG16 of width 1 is 15M numbers, 60 MB.
MAX_ELEMENTS = 200_000_000
MAX_BYTES = 512 * MiB
MAX_DEPTH = 8
MAX_NODES = 10_000
MAX_NAME = 200


# -- reading the file: HDF5 groups and datasets to plain Python ------------------------------

def _read_group(group, where: str, depth: int, budget: Budget) -> dict:
    import h5py

    if depth > MAX_DEPTH:
        raise UserError(f"{where}: groups nested deeper than {MAX_DEPTH}")
    out = {}
    for key in group.keys():
        if len(key) > MAX_NAME:
            raise UserError(f"{where}: a name longer than {MAX_NAME} characters")
        link = group.get(key, getlink=True)
        if not isinstance(link, h5py.HardLink):  # soft or external links could reach other files
            raise UserError(f"{where}/{key}: links are not allowed in a NIR file")
        item = group[key]
        if isinstance(item, h5py.Group):
            out[key] = _read_group(item, f"{where}/{key}", depth + 1, budget)
        elif isinstance(item, h5py.Dataset):
            out[key] = _read_dataset(item, f"{where}/{key}", budget)
        else:
            raise UserError(f"{where}/{key}: not a group or dataset")
        if len(out) > MAX_NODES:
            raise UserError(f"{where}: more than {MAX_NODES} entries")
    return out


def _read_dataset(ds, where: str, budget: Budget):
    if ds.is_virtual or ds.external:
        raise UserError(f"{where}: datasets stored in other files are not allowed")
    n = math.prod(ds.shape) if ds.shape is not None else 0
    # a chunk is decompressed whole, and may be declared larger than the dataset
    chunk = math.prod(ds.chunks) if ds.chunks else 0
    budget.take(where, max(n, chunk) * ds.dtype.itemsize, n)
    kind = ds.dtype.kind
    if kind not in "biufSOU":
        raise UserError(f"{where}: unsupported data type {ds.dtype}")
    value = ds[()]
    if kind in "SO" or kind == "U":
        return _text(value, where)
    return np.asarray(value)


def _text(value, where: str):
    def one(v):
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: text that is not UTF-8") from None
        if isinstance(v, str):
            return v
        raise UserError(f"{where}: unsupported value of type {type(v).__name__}")

    if isinstance(value, np.ndarray):
        return np.array([one(v) for v in value.ravel()], dtype=object).reshape(value.shape)
    return one(value)


def read_file(path: Path) -> dict:
    """The file's "node" group as nested dicts of numpy arrays and strings."""
    path = Path(path)
    regular_size(path, "NIR file")  # HDF5 opens the path itself: a FIFO would hang it
    try:
        import h5py
    except ImportError:
        raise UserError("reading NIR files needs h5py (pip install h5py)") from None
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise UserError(f"{path} is not a NIR file (not readable as HDF5: "
                        f"{type(e).__name__})") from None
    try:
        with f:
            if "node" not in f:
                raise UserError(f"{path} is not a NIR file (no 'node' group)")
            if not hasattr(f["node"], "keys"):
                raise UserError(f"{path}: 'node' is not a group")
            return _read_group(f["node"], f"{path}: node", 0,
                               Budget("a NIR file", MAX_BYTES, MAX_ELEMENTS))
    except UserError:
        raise
    except Exception as e:  # h5py/HDF5 errors on a damaged file
        raise UserError(f"{path} could not be read as a NIR file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]})") from None


# -- node parameters ---------------------------------------------------------------------------

def _num(node: dict, key: str, name: str, required: bool = True):
    v = node.get(key)
    if v is None:
        if required:
            raise UserError(f"node {name}: missing {key}")
        return None
    if isinstance(v, dict) or (isinstance(v, np.ndarray) and v.dtype == object) or \
            isinstance(v, str):
        raise UserError(f"node {name}: {key} is not numeric")
    a = np.asarray(v)
    if a.dtype.kind not in "biuf":
        raise UserError(f"node {name}: {key} is not numeric")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise UserError(f"node {name}: {key} holds NaN or infinite values")
    return a


def _uniform(node: dict, key: str, name: str, shape: tuple, default=None) -> float:
    """One value of a per-neuron parameter: a scalar, or an array (broadcastable to the
    layer's shape) whose values are all equal."""
    a = _num(node, key, name, required=default is None)
    if a is None:
        return float(default)
    if a.size == 0:
        raise UserError(f"node {name}: {key} is empty")
    if a.size > 1:
        try:
            np.broadcast_shapes(a.shape, shape)
        except ValueError:
            raise UserError(f"node {name}: {key} has shape {list(a.shape)}, the layer "
                            f"{list(shape)}") from None
        if not (a == a.flat[0]).all():
            raise UserError(f"node {name}: {key} differs between neurons; only one value per "
                            "layer is supported")
    return float(a.flat[0])


def _ints(node: dict, key: str, name: str, n: int, default=None) -> list[int]:
    a = _num(node, key, name, required=default is None)
    if a is None:
        return list(default)
    a = a.ravel()
    if a.size == 1:
        a = np.repeat(a, n)
    if a.size != n or not all(float(v).is_integer() for v in a) or (np.abs(a) > 1e6).any():
        raise UserError(f"node {name}: {key} must be {n} integers, got {a.tolist()}")
    return [int(v) for v in a]


def _f32(v: float) -> float:
    return float(np.float32(v))


def _rate(name: str, what: str, dt: float, tau: float) -> float:
    """dt/tau in float64, then float32 (what the neuron computes with)."""
    if not tau > 0:
        raise UserError(f"node {name}: {what} must be positive, got {tau}")
    a = dt / tau
    if not 0.0 < a <= 1.0 + 1e-12:
        raise UserError(f"node {name}: dt/{what} = {a:.6g} is outside (0, 1] (dt {dt:g}, "
                        f"{what} {tau:g}): the time step does not fit this neuron; give the "
                        "--dt the graph was written for")
    return _f32(min(a, 1.0))


# -- the chain -----------------------------------------------------------------------------

@dataclass
class Layer:
    desc: dict
    tensors: dict = field(default_factory=dict)  # parameter/buffer name -> numpy array
    node: str = ""


@dataclass
class Reader:
    dt: float | None
    convention: str
    shape: tuple = ()
    out: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def add(self, node: str, desc: dict, **tensors) -> None:
        self.out.append(Layer(desc, tensors, node))

    def gain(self, node: str, g: float) -> None:
        """An input gain before a neuron, as a Scale layer, unless it is 1 (to 1e-6: the
        writers compute r·dt/tau = 1 in float32)."""
        if abs(g - 1.0) > 1e-6:
            self.add(node, {"type": "scale", "shape": []}, scale=np.float32(g))
            self.notes.append(f"{node}: input gain {g:.6g}")

    def need_dt(self, node: str) -> float:
        if self.dt is None:
            raise UserError(f"node {node}: the graph does not say its time step: give --dt "
                            "(Norse writes with 1e-3, snnTorch and SpikingJelly with 1e-4, "
                            "Sinabs in steps: 1) or --convention")
        return self.dt


def _shape_of(r: Reader, name: str, rank: int | None = None) -> tuple:
    if rank is not None and len(r.shape) != rank:
        raise UserError(f"node {name}: needs a {rank}-d input (without batch), got "
                        f"{list(r.shape)}")
    return r.shape


def _affine(r: Reader, name: str, node: dict, bias: bool):
    w = _num(node, "weight", name)
    if w.ndim != 2:
        raise UserError(f"node {name}: weight must be 2-d, got {list(w.shape)}")
    o, i = w.shape
    n = int(np.prod(r.shape))
    if r.shape != (i,):
        if n != i:
            raise UserError(f"node {name}: expects {i} inputs, gets {list(r.shape)}")
        r.add(name, {"type": "flatten", "start": 1, "end": -1})  # NIR readers flatten here
    b = _num(node, "bias", name) if bias else None
    if b is not None and b.shape != (o,):
        raise UserError(f"node {name}: bias has shape {list(b.shape)}, expected [{o}]")
    t = {"weight": w.astype(np.float32)}
    if b is not None:
        t["bias"] = b.astype(np.float32)
    r.add(name, {"type": "linear", "in": i, "out": o, "bias": b is not None}, **t)
    r.shape = (o,)


def _conv(r: Reader, name: str, node: dict, dims: int):
    w = _num(node, "weight", name)
    if w.ndim != dims + 2:
        raise UserError(f"node {name}: weight must be {dims + 2}-d, got {list(w.shape)}")
    groups = _ints(node, "groups", name, 1, [1])[0]
    stride = _ints(node, "stride", name, dims, [1] * dims)
    dilation = _ints(node, "dilation", name, dims, [1] * dims)
    if isinstance(node.get("padding"), str):
        raise UserError(f"node {name}: padding {node['padding']!r} given as text is not "
                        "supported (numbers only)")
    padding = _ints(node, "padding", name, dims, [0] * dims)
    o, ig, *k = w.shape
    shape = _shape_of(r, name, dims + 1)
    if groups < 1 or o % groups or shape[0] != ig * groups:
        raise UserError(f"node {name}: weight {list(w.shape)} with groups {groups} does not "
                        f"fit an input of {shape[0]} channels")
    if min(stride + dilation) < 1 or min(padding) < 0:
        raise UserError(f"node {name}: stride/dilation must be >= 1 and padding >= 0")
    given = node.get("input_shape")
    if given is not None and not isinstance(given, (dict, str)):
        gs = _ints(node, "input_shape", name, dims)
        if tuple(gs) != tuple(shape[1:]):
            raise UserError(f"node {name}: input_shape {gs} does not match the graph's "
                            f"{list(shape[1:])}")
    out = [(s + 2 * p - d * (kk - 1) - 1) // st + 1
           for s, p, d, kk, st in zip(shape[1:], padding, dilation, k, stride)]
    if min(out) < 1:
        raise UserError(f"node {name}: input {list(shape)} is smaller than its kernel")
    b = _num(node, "bias", name, required=False)
    if b is None or b.size == 1 and o != 1 and float(b.flat[0]) == 0.0:
        b = np.zeros(o)
    if b.shape != (o,):
        raise UserError(f"node {name}: bias has shape {list(b.shape)}, expected [{o}]")
    r.add(name, {"type": f"conv{dims}d", "in": ig * groups, "out": o, "kernel": k,
                 "stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                 "bias": True}, weight=w.astype(np.float32), bias=b.astype(np.float32))
    r.shape = (o, *out)


def _flatten(r: Reader, name: str, node: dict):
    n = len(r.shape)
    start = _ints(node, "start_dim", name, 1, [0])[0]
    end = _ints(node, "end_dim", name, 1, [-1])[0]
    s, e = start % n if n else 0, end % n if n else 0
    if not n or not -n <= start < n or not -n <= end < n or s > e:
        raise UserError(f"node {name}: flatten dims {start}..{end} do not fit an input of "
                        f"{list(r.shape)}")
    r.add(name, {"type": "flatten", "start": s + 1, "end": -1 if e == n - 1 else e + 1})
    r.shape = (*r.shape[:s], int(np.prod(r.shape[s:e + 1])), *r.shape[e + 1:])


def _pool(r: Reader, name: str, node: dict, kind: str, follower: tuple | None):
    shape = _shape_of(r, name, 3)
    k = _ints(node, "kernel_size", name, 2)
    st = _ints(node, "stride", name, 2, k)
    pad = _ints(node, "padding", name, 2, [0, 0])
    if min(k + st) < 1 or min(pad) < 0 or pad[0] * 2 > k[0] or pad[1] * 2 > k[1]:
        raise UserError(f"node {name}: kernel/stride must be >= 1, padding at most half the "
                        "kernel")
    out = [(s + 2 * p - kk) // ss + 1 for s, p, kk, ss in zip(shape[1:], pad, k, st)]
    if min(out) < 1:
        raise UserError(f"node {name}: input {list(shape)} is smaller than its window")
    desc = {"type": "avgpool2d", "kernel": k, "stride": st, "padding": pad,
            "ceil_mode": False, "count_include_pad": True, "divisor_override": None}
    used = False
    if kind == "sum":
        # SumPool + Scale(1/area) (what edgeprune and pooling exporters write) is an average
        if follower is not None and follower[1].get("type") == "Scale":
            s = _num(follower[1], "scale", follower[0])
            if s.size and (s == s.flat[0]).all() and \
                    np.float32(s.flat[0]) == np.float32(1.0 / (k[0] * k[1])):
                used = True
        if not used:
            desc = {"type": "sumpool2d", "kernel": k, "stride": st, "padding": pad}
    r.add(name, desc)
    r.shape = (shape[0], *out)
    return used


def _scale(r: Reader, name: str, node: dict):
    s = _num(node, "scale", name)
    if s.size == 1:
        r.add(name, {"type": "scale", "shape": []}, scale=np.float32(s.flat[0]))
        return
    try:
        full = np.broadcast_to(s, r.shape)
    except ValueError:
        raise UserError(f"node {name}: scale of shape {list(s.shape)} does not fit "
                        f"{list(r.shape)}") from None
    r.add(name, {"type": "scale", "shape": list(r.shape)}, scale=full.astype(np.float32))


def _exact(r: Reader, name: str, node: dict) -> bool:
    """An edgeprune-written neuron: its exact description from the node's metadata."""
    meta = node.get("metadata")
    desc = meta.get("edgeprune.layer") if isinstance(meta, dict) else None
    if r.convention != "edgeprune" or not isinstance(desc, dict):
        return False
    desc = _plain(desc)
    kind = layers.KINDS.get(desc.get("type"))
    if kind is None or not kind.neuron:
        raise UserError(f"node {name}: its edgeprune description names no neuron kind")
    try:
        layers.build(desc)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"node {name}: its edgeprune description is malformed "
                        f"({type(e).__name__})") from None
    r.add(name, desc)
    return True


def _exact_or(reader, node_type: str):
    """A neuron node's reader: an edgeprune-written node's exact description when it has one,
    the framework's meaning under a framework's convention (FRAMEWORK_READERS), else
    `reader`'s mapping of NIR's parameters."""
    def read(r: Reader, name: str, node: dict):
        if _exact(r, name, node):
            return
        if r.convention in FRAMEWORK_READERS:
            own = FRAMEWORK_READERS[r.convention].get(node_type)
            if own is None:
                raise UserError(f"node {name}: NIR {node_type} under the {r.convention} "
                                f"convention is not supported: {WHY_NOT[r.convention]}; not "
                                "imported")
            own(r, name, node)
            return
        reader(r, name, node)
    return read


def _plain(v):
    """Metadata read from HDF5 (numpy scalars) as plain JSON-able Python values."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return _plain(v.item()) if v.ndim == 0 else [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, str) and v == "__none__":
        return None
    return v


def _no_leak(node: dict, name: str, shape: tuple) -> None:
    if _uniform(node, "v_leak", name, shape, 0.0) != 0.0:
        raise UserError(f"node {name}: v_leak must be 0")


def _lif(r: Reader, name: str, node: dict):
    shape = r.shape
    dt = r.need_dt(name)
    tau = _uniform(node, "tau", name, shape)
    res = _uniform(node, "r", name, shape, 1.0)
    th = _uniform(node, "v_threshold", name, shape)
    reset = _uniform(node, "v_reset", name, shape, 0.0)
    _no_leak(node, name, shape)
    a = _rate(name, "tau", dt, tau)
    if r.convention == "snntorch":
        r.gain(name, res * dt / tau)
        r.add(name, {"type": "decay_lif", "neuron": DecayParams(
            beta=_f32(1.0 - dt / tau), threshold=_f32(th)).to_dict()})
        return
    r.gain(name, res)
    r.add(name, {"type": "lif", "neuron": NeuronParams(
        tau_mem_inv=a, v_th=_f32(th), v_reset=_f32(reset)).to_dict()})


def _cuba(r: Reader, name: str, node: dict):
    shape = r.shape
    dt = r.need_dt(name)
    tm = _uniform(node, "tau_mem", name, shape)
    ts = _uniform(node, "tau_syn", name, shape)
    res = _uniform(node, "r", name, shape, 1.0)
    w_in = _uniform(node, "w_in", name, shape, 1.0)
    th = _uniform(node, "v_threshold", name, shape)
    reset = _uniform(node, "v_reset", name, shape, 0.0)
    _no_leak(node, name, shape)
    a, b = _rate(name, "tau_mem", dt, tm), _rate(name, "tau_syn", dt, ts)
    if r.convention == "snntorch":
        r.gain(name, res * w_in * (dt / tm) * (dt / ts))
        r.add(name, {"type": "decay_lif", "neuron": DecayParams(
            beta=_f32(1.0 - dt / tm), threshold=_f32(th),
            alpha_syn=_f32(1.0 - dt / ts)).to_dict()})
        return
    r.gain(name, res * w_in * dt / ts)
    r.add(name, {"type": "cuba_lif", "neuron": CubaParams(
        tau_mem_inv=a, tau_syn_inv=b, v_th=_f32(th), v_reset=_f32(reset)).to_dict()})


def _if(r: Reader, name: str, node: dict):
    shape = r.shape
    dt = r.need_dt(name)
    res = _uniform(node, "r", name, shape, 1.0)
    th = _uniform(node, "v_threshold", name, shape)
    if _uniform(node, "v_reset", name, shape, 0.0) != 0.0:
        raise UserError(f"node {name}: an IF neuron that resets to a value other than 0 is "
                        "not supported")
    r.gain(name, dt * res)
    r.add(name, {"type": "decay_lif", "neuron": DecayParams(
        beta=1.0, threshold=_f32(th), reset="zero", reset_delay=False).to_dict()})


def _li(r: Reader, name: str, node: dict):
    shape = r.shape
    dt = r.need_dt(name)
    tau = _uniform(node, "tau", name, shape)
    res = _uniform(node, "r", name, shape, 1.0)
    _no_leak(node, name, shape)
    a = _rate(name, "tau", dt, tau)
    r.gain(name, res)
    r.add(name, {"type": "li", **LIParams(a, 1.0).to_dict()})


def _integrator(r: Reader, name: str, node: dict):
    dt = r.need_dt(name)
    r.gain(name, dt * _uniform(node, "r", name, r.shape, 1.0))
    r.add(name, {"type": "integrator"})


def _threshold(r: Reader, name: str, node: dict):
    r.add(name, {"type": "threshold",
                 "threshold": _f32(_uniform(node, "threshold", name, r.shape))})


# -- the frameworks' own meanings of NIR's neuron nodes ----------------------------------------

def _one(r: Reader, name: str, node: dict, key: str, want: float, what: str) -> None:
    """A parameter the framework always writes with one value; any other cannot be read."""
    v = _uniform(node, key, name, r.shape, want)
    if not math.isclose(v, want, rel_tol=1e-5, abs_tol=1e-12):
        raise UserError(f"node {name}: {key} = {v:.6g}, but {what} writes {want:.6g}: not a "
                        f"node this convention can read exactly")


def _sinabs_alpha(tau: float) -> float:
    """Sinabs' alpha_mem = exp(−1/tau_mem), computed as Sinabs does (float32 torch)."""
    import torch

    return float(torch.exp(-1.0 / torch.as_tensor(tau, dtype=torch.float32)))


def _sinabs_if(r: Reader, name: str, node: dict):
    """Sinabs' IAF (to_nir writes IF with r = 1): its defaults, multi-spike output and
    subtractive reset, no floor."""
    _one(r, name, node, "r", 1.0, "Sinabs")
    _one(r, name, node, "v_reset", 0.0, "Sinabs")
    th = _uniform(node, "v_threshold", name, r.shape)
    r.add(name, {"type": "sinabs_lif", "neuron": SinabsParams(
        alpha_mem=1.0, threshold=_f32(th)).to_dict()})
    r.notes.append(f"{name}: Sinabs IAF defaults (multi-spike, subtractive reset)")


def _sinabs_lif(r: Reader, name: str, node: dict):
    """Sinabs' LIF (to_nir writes tau_mem in steps, r = 1, v_leak = 0): its defaults, input
    normalized by (1 − alpha), multi-spike output and subtractive reset."""
    _one(r, name, node, "r", 1.0, "Sinabs")
    _one(r, name, node, "v_leak", 0.0, "Sinabs")
    _one(r, name, node, "v_reset", 0.0, "Sinabs")
    tau = _uniform(node, "tau", name, r.shape) / r.need_dt(name)
    if not tau > 0:
        raise UserError(f"node {name}: tau must be positive, got {tau}")
    th = _uniform(node, "v_threshold", name, r.shape)
    r.add(name, {"type": "sinabs_lif", "neuron": SinabsParams(
        alpha_mem=_sinabs_alpha(tau), threshold=_f32(th), norm_input=True).to_dict()})
    r.notes.append(f"{name}: Sinabs LIF defaults (norm_input, multi-spike, subtractive reset)")


def _charge_if(r: Reader, name: str, node: dict):
    """SpikingJelly's IFNode (nir_exchange writes IF with r = 1/dt)."""
    dt = r.need_dt(name)
    _one(r, name, node, "r", 1.0 / dt, f"SpikingJelly (r = 1/dt, dt {dt:g})")
    r.add(name, {"type": "charge_lif", "neuron": ChargeParams(
        v_threshold=_f32(_uniform(node, "v_threshold", name, r.shape)),
        v_reset=_f32(_uniform(node, "v_reset", name, r.shape, 0.0))).to_dict()})


def _charge_lif(r: Reader, name: str, node: dict):
    """SpikingJelly's LIFNode (tau·dt, r = 1 with decay_input, r = tau without; v_leak =
    v_reset; its exporter refuses soft resets, so a file's reset is the hard one)."""
    dt = r.need_dt(name)
    tau = _uniform(node, "tau", name, r.shape) / dt
    if not (math.isfinite(tau) and tau > 1.0):
        raise UserError(f"node {name}: tau/dt = {tau:.6g}; SpikingJelly's LIF needs it > 1")
    res = _uniform(node, "r", name, r.shape, 1.0)
    if math.isclose(res, 1.0, rel_tol=1e-6):
        decay_input = True
    elif math.isclose(res, tau, rel_tol=1e-5):
        decay_input = False
    else:
        raise UserError(f"node {name}: r = {res:.6g}, but SpikingJelly writes 1 or tau/dt")
    vr = _uniform(node, "v_reset", name, r.shape, 0.0)
    _one(r, name, node, "v_leak", vr, "SpikingJelly (v_leak = v_reset)")
    r.add(name, {"type": "charge_lif", "neuron": ChargeParams(
        tau=tau, decay_input=decay_input, v_reset=_f32(vr),
        v_threshold=_f32(_uniform(node, "v_threshold", name, r.shape))).to_dict()})


def _rockpool_decay(dt: float, tau: float) -> float:
    """Rockpool's tau_to_decay: exp(−dt/tau) with tau a float32 tensor, as its LIFTorch does."""
    import torch

    return float(torch.exp(-dt / torch.as_tensor(tau, dtype=torch.float32)))


def _rockpool_lif(r: Reader, name: str, node: dict):
    """Rockpool's LIFTorch (to_nir writes CubaLIF with r = tau_mem·exp(−dt/tau_mem)/dt, w_in 1,
    v_leak 0: the bias is not written; its from_nir reads v_leak as the bias)."""
    dt = r.need_dt(name)
    tm, ts = (_uniform(node, k, name, r.shape) for k in ("tau_mem", "tau_syn"))
    if not (tm > 0 and ts > 0):
        raise UserError(f"node {name}: tau_mem and tau_syn must be positive")
    am, asyn = _rockpool_decay(dt, tm), _rockpool_decay(dt, ts)
    _one(r, name, node, "r", tm * math.exp(-dt / tm) / dt,
         f"Rockpool (r = tau_mem·exp(−dt/tau_mem)/dt, dt {dt:g})")
    _one(r, name, node, "w_in", 1.0, "Rockpool")
    _one(r, name, node, "v_reset", 0.0, "Rockpool")
    r.add(name, {"type": "rockpool_lif", "neuron": RockpoolParams(
        alpha_mem=am, alpha_syn=asyn, bias=_f32(_uniform(node, "v_leak", name, r.shape, 0.0)),
        threshold=_f32(_uniform(node, "v_threshold", name, r.shape))).to_dict()})
    r.notes.append(f"{name}: Rockpool LIFTorch (up to 2^16 spikes a step, subtractive reset; "
                   "its to_nir writes no bias: v_leak read as it)")


# convention -> NIR neuron node type -> its reader; a framework convention's other neuron nodes
# are refused (its neurons are not NIR's equations, and edgeprune has no exact form for them)
FRAMEWORK_READERS = {
    "sinabs": {"IF": _sinabs_if, "LIF": _sinabs_lif},
    "spikingjelly": {"IF": _charge_if, "LIF": _charge_lif},
    "rockpool": {"CubaLIF": _rockpool_lif},
}
WHY_NOT = {
    "rockpool": "Rockpool writes CubaLIF (LIFTorch) only",
    "sinabs": "Sinabs writes IF (IAF) and LIF only",
    "spikingjelly": "SpikingJelly's IFNode and LIFNode are read (its CUBALIFNode is not)",
}


# the NIR-read backend of the neuron kinds: NIR neuron node type -> (the edgeprune kinds it
# becomes, its reader of NIR's parameters). An edgeprune-written node reads as its exact
# description instead, whatever its kind (_exact_or).
NEURON_READERS = {
    "LIF": (("lif", "decay_lif", "sinabs_lif", "charge_lif"), _lif),
    "CubaLIF": (("cuba_lif", "decay_lif", "rockpool_lif"), _cuba),
    "IF": (("decay_lif", "sinabs_lif", "charge_lif"), _if),
    "LI": (("li",), _li),
    "I": (("integrator",), _integrator),  # NIR's integrator node
    "Integrator": (("integrator",), _integrator),
}
# NIR node type -> reader(reader, node name, node dict); pooling and Scale also see the next node
NODES = {
    "Affine": lambda r, n, d: _affine(r, n, d, True),
    "Linear": lambda r, n, d: _affine(r, n, d, False),
    "Conv1d": lambda r, n, d: _conv(r, n, d, 1),
    "Conv2d": lambda r, n, d: _conv(r, n, d, 2),
    "Flatten": _flatten,
    "Scale": _scale,
    "Threshold": _threshold,
    **{t: _exact_or(reader, t) for t, (_, reader) in NEURON_READERS.items()},
    "Identity": lambda r, n, d: None,
}
POOLS = {"SumPool2d": "sum", "AvgPool2d": "avg"}


# -- the graph ----------------------------------------------------------------------------

@dataclass
class Imported:
    """What a NIR file becomes: the layer list with its tensors and how it was read."""

    layers: list  # of Layer
    input_shape: tuple
    output_shape: tuple
    dt: float | None
    convention: str
    metadata: dict
    notes: list
    writer: str | None = None  # the framework whose fingerprint the graph carries (written_by)


def _edges(graph: dict) -> list[tuple[str, str]]:
    e = graph.get("edges")
    if e is None:
        raise UserError("the NIR graph has no edges")
    if isinstance(e, str):
        raise UserError("the NIR graph's edges are not a list of pairs")
    a = np.asarray(e, dtype=object)
    if a.size == 0:
        raise UserError("the NIR graph has no edges")
    if a.ndim != 2 or a.shape[1] != 2 or not all(isinstance(v, str) for v in a.ravel()):
        raise UserError("the NIR graph's edges are not a list of (source, target) names")
    return [(str(s), str(d)) for s, d in a]


def _type(name: str, node) -> str:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise UserError(f"node {name}: no type")
    return node["type"]


def chain(graph: dict) -> tuple[list[str], dict]:
    """The node names from Input to Output, and the nodes."""
    if not isinstance(graph, dict) or graph.get("type") != "NIRGraph":
        raise UserError("the file's top node is not a NIRGraph")
    nodes = graph.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise UserError("the NIR graph has no nodes")
    types = {n: _type(n, v) for n, v in nodes.items()}
    edges = _edges(graph)
    for s, d in edges:
        for n in (s, d):
            if n not in nodes:
                raise UserError(f"an edge names node {n!r}, which the graph does not have")
    inputs = [n for n, t in types.items() if t == "Input"]
    outputs = [n for n, t in types.items() if t == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"the NIR graph needs one Input and one Output node, it has "
                        f"{len(inputs)} and {len(outputs)}")
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in edges:
        succ[s].append(d)
        pred[d].append(s)
    order, at, seen = [inputs[0]], inputs[0], {inputs[0]}
    while at != outputs[0]:
        if types[at] == "NIRGraph":
            raise UserError(f"node {at}: nested graphs (recurrent layers) are not supported")
        if len(succ[at]) != 1:
            raise UserError(f"node {at} ({types[at]}) feeds {len(succ[at])} nodes: only a chain "
                            "of nodes from Input to Output is supported")
        at = succ[at][0]
        if at in seen:
            raise UserError(f"node {at}: the graph has a cycle (recurrence is not supported)")
        if len(pred[at]) != 1:
            raise UserError(f"node {at} ({types[at]}) sums {len(pred[at])} inputs: only a "
                            "chain of nodes from Input to Output is supported")
        seen.add(at)
        order.append(at)
    extra = sorted(set(nodes) - seen)
    if extra:
        raise UserError(f"node {extra[0]} ({types[extra[0]]}) is not on the path from Input to "
                        "Output")
    return order, nodes


def written_by_snntorch(order: list[str], nodes: dict, dt: float | None) -> bool:
    """snnTorch's mapping leaves a fingerprint: every LIF/CubaLIF has r = tau_mem/dt (and
    w_in = tau_syn/dt) with its dt, 1e-4, so the input gain r·dt/tau is 1 exactly where NIR's
    own writers put r = 1."""
    dt = dt or DEFAULT_DT["snntorch"]
    found = False
    for name in order:
        node = nodes[name]
        t = node.get("type")
        if t not in ("LIF", "CubaLIF"):
            continue
        try:
            tau = _num(node, "tau" if t == "LIF" else "tau_mem", name)
            r = _num(node, "r", name)
            ok = tau.shape == r.shape and np.allclose(r * dt / tau, 1.0, rtol=1e-5, atol=0)
            if t == "CubaLIF":
                ts, w = _num(node, "tau_syn", name), _num(node, "w_in", name)
                ok = ok and ts.shape == w.shape and np.allclose(w * dt / ts, 1.0, rtol=1e-5)
        except (UserError, ValueError, ZeroDivisionError):
            return False
        if not ok or np.allclose(r, 1.0):
            return False
        found = True
    return found


def _names(order: list[str]) -> list[str]:
    return order[1:-1]  # without Input and Output


def written_by(order: list[str], nodes: dict, dt: float | None) -> str | None:
    """The framework whose fingerprint the graph carries, or None:
    - snntorch: r = tau/dt on every LIF/CubaLIF (written_by_snntorch);
    - rockpool: every node named "<index>_<ModuleClass>" (to_nir names them so), one a
      Rockpool "...Torch" module;
    - spikingjelly: the Input named "input_1" and every node "_<index>" (torch.fx names of its
      nir_exchange), every IF with r = 1/dt (1e-4).
    Sinabs leaves none (see looks_like_sinabs)."""
    import re

    if written_by_snntorch(order, nodes, dt):
        return "snntorch"
    names = _names(order)
    if names and all(re.fullmatch(r"\d+_[A-Za-z]\w*", n) for n in names) and \
            any(n.endswith("Torch") for n in names):
        return "rockpool"
    if names and order[0] == "input_1" and all(re.fullmatch(r"_\d+", n) for n in names):
        step = dt or DEFAULT_DT["spikingjelly"]
        for n in names:
            if nodes[n].get("type") == "IF":
                rr = _num(nodes[n], "r", n, required=False)
                if rr is None or not np.allclose(rr * step, 1.0, rtol=1e-6):
                    return None
        return "spikingjelly"
    return None


def looks_like_sinabs(order: list[str], nodes: dict) -> bool:
    """sinabs.to_nir writes no metadata and names nodes by position ("0", "1", ...); an IF
    node with r = 1 is then most likely its IAF, whose defaults (multi-spike, subtractive
    reset) are not NIR's IF equations. Such a graph needs its convention named."""
    names = _names(order)
    if not names or not all(n.isdigit() for n in names):
        return False
    for n in names:
        if nodes[n].get("type") == "IF":
            rr = _num(nodes[n], "r", n, required=False)
            if rr is not None and np.allclose(rr, 1.0):
                return True
    return False


def resolve_convention(meta: dict, convention: str | None) -> str | None:
    """The convention asked for, or the one the graph's metadata names (None: neither)."""
    if convention is not None:
        if convention not in CONVENTIONS:
            raise UserError(f"unknown convention {convention!r}: choose "
                            f"{', '.join(CONVENTIONS)}")
        return convention
    for key in ("convention", "producer", "source", "framework"):
        v = meta.get(key)
        if isinstance(v, str) and v.lower() in CONVENTIONS:
            return v.lower()
    return None


def convert(graph: dict, dt: float | None = None, convention: str | None = None) -> Imported:
    """The layer list of a NIR graph read by `read_file`."""
    order, nodes = chain(graph)
    meta = graph.get("metadata") if isinstance(graph.get("metadata"), dict) else {}
    meta = _plain(meta)
    conv = resolve_convention(meta, convention)
    notes = []
    with np.errstate(all="ignore"):
        writer = written_by(order, nodes, dt)
    if conv is None:
        if writer is None and looks_like_sinabs(order, nodes):
            raise UserError("the NIR graph looks written by Sinabs (an IF node with r = 1, "
                            "nodes named by position, no metadata): Sinabs' IAF defaults "
                            "(multi-spike, subtractive reset) are not NIR's IF equations; give "
                            "--convention sinabs, or --convention nir for NIR's equations")
        conv = writer or "nir"
        if writer == "snntorch":
            notes.append("written with snnTorch's mapping (r = tau/dt with dt 1e-4): read with "
                         "its arithmetic and reset (--convention nir reads NIR's equations)")
        elif writer is not None:
            notes.append(f"written by {writer} (its node names): read with its neurons' "
                         "arithmetic (--convention nir reads NIR's equations)")
    if dt is None:
        md = meta.get("dt")
        if isinstance(md, (int, float)) and not isinstance(md, bool) and math.isfinite(md) \
                and md > 0:
            dt = float(md)
        else:
            dt = DEFAULT_DT.get(conv)
    if dt is not None and not (math.isfinite(dt) and dt > 0):
        raise UserError(f"--dt must be a positive number, got {dt}")
    inp = nodes[order[0]]
    raw = inp.get("shape", inp.get("input_type"))
    if isinstance(raw, dict):
        raw = raw.get("input")
    inp = {"shape": raw}
    if raw is None or isinstance(raw, str):
        raise UserError(f"node {order[0]} (Input): no input shape")
    a = _num(inp, "shape", order[0]).ravel()
    if not 1 <= a.size <= 4 or not all(v.is_integer() and v >= 1 for v in a.tolist()) or \
            float(np.prod(a)) > 50_000_000:
        raise UserError(f"node {order[0]} (Input): unusable input shape {a.tolist()}")
    shape = tuple(int(v) for v in a)
    if conv == "rockpool" and len(shape) >= 2 and len(order) > 2 and \
            nodes[order[1]].get("type") not in ("Conv1d", "Conv2d"):
        # Rockpool's Input keeps the batch and time dimensions ([1, T, N]); its modules see N.
        # (Its Input feeds a LinearTorch: an input that feeds a convolution is an image.)
        notes.append(f"{order[0]}: Rockpool's input shape {list(shape)} read as [{shape[-1]}] "
                     "(the leading batch/time dimensions dropped)")
        shape = shape[-1:]
    r = Reader(dt=dt, convention=conv, shape=shape, notes=notes)
    skip = False
    for i, name in enumerate(order[1:-1], start=1):
        if skip:
            skip = False
            continue
        t = nodes[name]["type"]
        try:
            if t in POOLS:
                nxt = order[i + 1]
                follower = (nxt, nodes[nxt]) if nxt != order[-1] else None
                skip = _pool(r, name, nodes[name], POOLS[t], follower)
            elif t in NODES:
                NODES[t](r, name, nodes[name])
            else:
                raise UserError(f"node {name}: NIR {t} is not supported (supported: "
                                f"{', '.join(sorted(list(NODES) + list(POOLS)))})")
        except UserError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError,
                OverflowError) as e:
            raise UserError(f"node {name} ({t}): malformed ({type(e).__name__})") from None
    if not r.out:
        raise UserError("the NIR graph has no layers between Input and Output")
    return Imported(r.out, tuple(shape), tuple(r.shape), dt, conv, meta, r.notes, writer)


def load(path: Path, dt: float | None = None, convention: str | None = None) -> Imported:
    return convert(read_file(path), dt, convention)

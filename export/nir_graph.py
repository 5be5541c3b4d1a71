"""The SNN as a NIR graph (`model.nir`), mapped layer by layer (not norse.torch.to_nir, which
drops BatchNorm/pooling/Flatten silently and writes a wrong tau; see NOTES.md).

Neuron mapping. Our discrete update (edgeprune.neurons, Norse's lif_box step with dt = 1) is
    v' = v + a·(x − v),  a = tau_mem_inv;  z = [v' > v_th];  v ← v_reset where z else v'
NIR's LIF is  tau·dv/dt = (v_leak − v) + r·I,  z = [v > v_threshold],  v ← v_reset on a spike.
One forward-Euler step of it with step dt is  v' = v + (dt/tau)·((v_leak − v) + r·I), which is
exactly ours with
    tau = dt / tau_mem_inv  (dt = 1, so tau = 1/0.75 for the paper's leak),  r = 1,  v_leak = 0,
    v_threshold = v_th,  v_reset = v_reset.
NIR nodes carry no dt: the graph's metadata records dt = 1 and the timestep count; a simulator
must integrate with that dt. NIR's LIF resets to a value only: a model with `reset = "subtract"` is
refused. tau is stored in float64 so dt/tau rounds back to exactly tau_mem_inv.
Every neuron node also carries its exact edgeprune description in its metadata
("edgeprune.layer"): edgeprune's importer and simulator reproduce it bit for bit from there,
other readers see the standard node. The other neuron kinds:
    CubaLIF (Norse LIFCell)      CubaLIF, tau_mem = 1/a, tau_syn = 1/b, r = 1, w_in = 1/b
                                 (exact under forward Euler, current first)
    DecayLIF (snnTorch)          LIF / CubaLIF as snnTorch writes them (tau = 1/(1 − beta),
                                 r = tau, w_in = tau_syn), or IF when beta = 1. NIR's equations
                                 reset in the same step: the one-step-late subtraction is
                                 only in the metadata
    Sinabs-form LIF              IF (IAF) or LIF (tau = −1/ln alpha_mem), as Sinabs writes
                                 them (r = 1): the count, the reset and the floor are only in
                                 the metadata
    SpikingJelly-form LIF        IF (r = 1/dt) or LIF (tau·dt, r = 1 or tau with decay_input
                                 off, v_leak = v_reset) as SpikingJelly writes them; its
                                 threshold test (>=) is only in the metadata
    Integrator, Threshold, Scale  Integrator (r = 1), Threshold, Scale

Layer mapping (BatchNorm is folded into the preceding conv/linear first):
    Normalize (direct encoding)  Conv2d 1×1, weight diag(1/std), bias −mean/std (the graph
                                 takes raw [0,1] pixels, like the ONNX graph); Conv1d 1×1 or
                                 a diagonal Affine for sequence or flat inputs; no node at all
                                 when mean 0 and std 1
    Conv2d                       Conv2d (bias zeros when the layer has none)
    Linear                       Affine (Linear when it has no bias)
    AvgPool2d / AdaptiveAvgPool2d  SumPool2d + Scale(1/kernel area)
    SumPool2d                      SumPool2d
    Flatten                      Flatten over all non-batch dims (NIR shapes exclude batch)
    LIF                          LIF, one value per neuron, node named by the PyTorch module name
    LI (leaky integrator readout) LI with tau = dt / tau_mem_inv, r = 1, v_leak = 0, when it
                                 carries no synaptic current (tau_syn_inv = 1, Norse's LIBoxCell):
                                 then v' = v + a·(x − v) is NIR LI's forward-Euler step exactly.
                                 With a synaptic current (Norse LICell) the model is refused:
                                 Norse adds the input to the current *before* the voltage update,
                                 which a NIR CubaLI reader would integrate one step later.
    Dropout                      nothing (identity in inference)
    SpikingBasicBlock            conv1 → lif1 → conv2 → lif2, plus the shortcut (a 1×1 conv, or a
                                 direct edge) into lif2: NIR sums the edges that enter a node.
MaxPool2d (NIR 1.0 has no max pooling), an unfolded BatchNorm, and any other layer raise a
UserError naming the layer. For direct encoding the image is the input at every timestep (the
PyTorch model computes the stem once; the result is the same). The output node gives per-step
logits; the prediction is the argmax of their sum over T.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import nir
import torch
from torch import nn

from edgeprune import layers
from edgeprune.diskspace import write_bytes
from edgeprune.errors import UserError
from edgeprune.models import SNN, Normalize, SpikingBasicBlock, is_stateful
from edgeprune.neurons import MODULES, Neuron, Scale, Threshold
from edgeprune.pooling import AvgPool2d, SumPool2d

from .prepare import NORMS, for_export

DT = 1.0


class _Builder:
    def __init__(self):
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: nir.NIRNode, sources: list[str]) -> list[str]:
        self.nodes[name] = node
        self.edges += [(s, name) for s in sources]
        return [name]


def _np(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


def _pair(v) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v), dtype=np.int64)


def _conv(b: _Builder, name: str, m: nn.Conv2d, x, y, sources):
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UserError(f"cannot express layer {name} ({m}) in NIR: only zero padding given "
                        "as numbers is mapped")
    bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
    node = nir.Conv2d(input_shape=tuple(int(s) for s in x.shape[2:]), weight=_np(m.weight),
                      stride=tuple(m.stride), padding=tuple(m.padding),
                      dilation=tuple(m.dilation), groups=m.groups, bias=bias)
    return b.add(name, node, sources)


def _conv1d(b: _Builder, name: str, m: nn.Conv1d, x, y, sources):
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UserError(f"cannot express layer {name} ({m}) in NIR: only zero padding given "
                        "as numbers is mapped")
    bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
    node = nir.Conv1d(input_shape=int(x.shape[2]), weight=_np(m.weight), stride=int(m.stride[0]),
                      padding=int(m.padding[0]), dilation=int(m.dilation[0]), groups=m.groups,
                      bias=bias)
    return b.add(name, node, sources)


def _linear(b: _Builder, name: str, m: nn.Linear, x, y, sources):
    if x.dim() != 2:
        raise UserError(f"cannot express layer {name} in NIR: Linear on a {x.dim() - 1}-d input")
    node = (nir.Affine(weight=_np(m.weight), bias=_np(m.bias)) if m.bias is not None
            else nir.Linear(weight=_np(m.weight)))
    return b.add(name, node, sources)


def _full(shape, v) -> np.ndarray:
    return np.full(tuple(shape), v, dtype=np.float64)


def _exact(m: nn.Module) -> dict:
    """Node metadata with the layer's exact edgeprune description: a reader that knows it (our
    importer, our simulator) reproduces the neuron bit for bit; other readers see the NIR node.
    None values are left out (HDF5 stores no None; the defaults restore them)."""
    def clean(v):
        return {k: clean(x) for k, x in v.items() if x is not None} if isinstance(v, dict) else v
    return {"edgeprune.layer": clean(layers.describe(m))}


def _lif(name: str, p, shape, meta: dict):
    if p.reset != "value":
        raise UserError(f"cannot express layer {name} in NIR: its LIF resets by subtraction, "
                        "and NIR's LIF resets to a value")
    return nir.LIF(tau=_full(shape, DT / p.tau_mem_inv), r=_full(shape, 1.0),
                   v_leak=_full(shape, 0.0), v_threshold=_full(shape, p.v_th),
                   v_reset=_full(shape, p.v_reset), metadata=meta)


def _cuba(name: str, p, shape, meta: dict):
    """Norse's LIFCell is NIR's CubaLIF integrated current first (edgeprune.neuron_kinds):
    tau_mem = dt/a, tau_syn = dt/b, and w_in = 1/b so that the input gain r·w_in·dt/tau_syn
    is 1. NIR resets to a value: a subtracting reset is refused."""
    if p.reset != "value":
        raise UserError(f"cannot express layer {name} in NIR: its LIF resets by subtraction, "
                        "and NIR's CubaLIF resets to a value")
    return nir.CubaLIF(tau_mem=_full(shape, DT / p.tau_mem_inv),
                       tau_syn=_full(shape, DT / p.tau_syn_inv), r=_full(shape, 1.0),
                       v_leak=_full(shape, 0.0), v_threshold=_full(shape, p.v_th),
                       v_reset=_full(shape, p.v_reset), w_in=_full(shape, 1.0 / p.tau_syn_inv),
                       metadata=meta)


def _decay(name: str, p, shape, meta: dict):
    """snnTorch's Leaky / Synaptic the way snnTorch maps them (tau = dt/(1 − beta), r = tau/dt,
    w_in = tau_syn/dt), with dt = 1; beta = 1 (an IF neuron) as NIR's IF. NIR's equations
    reset in the same step to v_reset; the one-step-late subtraction is in the node's metadata
    (exact for edgeprune's reader, approximate for others)."""
    if p.beta >= 1.0 and p.alpha_syn is None:
        return nir.IF(r=_full(shape, 1.0), v_threshold=_full(shape, p.threshold),
                      v_reset=_full(shape, 0.0), metadata=meta)
    if p.beta >= 1.0 or (p.alpha_syn is not None and p.alpha_syn >= 1.0):
        raise UserError(f"cannot express layer {name} in NIR: a synaptic current without decay")
    tau = DT / (1.0 - p.beta)
    if p.alpha_syn is None:
        return nir.LIF(tau=_full(shape, tau), r=_full(shape, tau / DT), v_leak=_full(shape, 0.0),
                       v_threshold=_full(shape, p.threshold), v_reset=_full(shape, 0.0),
                       metadata=meta)
    ts = DT / (1.0 - p.alpha_syn)
    return nir.CubaLIF(tau_mem=_full(shape, tau), tau_syn=_full(shape, ts),
                       r=_full(shape, tau / DT), v_leak=_full(shape, 0.0),
                       v_threshold=_full(shape, p.threshold), v_reset=_full(shape, 0.0),
                       w_in=_full(shape, ts / DT), metadata=meta)


def _sinabs(name: str, p, shape, meta: dict):
    """Sinabs' IAF / LIF the way sinabs.to_nir writes them (r = 1, v_leak = 0)."""
    reset = p.reset_value if p.reset == "value" else 0.0
    if p.alpha_mem >= 1.0:
        return nir.IF(r=_full(shape, 1.0), v_threshold=_full(shape, p.threshold),
                      v_reset=_full(shape, reset), metadata=meta)
    return nir.LIF(tau=_full(shape, -DT / float(np.log(np.float64(p.alpha_mem)))),
                   r=_full(shape, 1.0), v_leak=_full(shape, 0.0),
                   v_threshold=_full(shape, p.threshold), v_reset=_full(shape, reset),
                   metadata=meta)


def _charge(name: str, p, shape, meta: dict):
    """SpikingJelly's IFNode / LIFNode / ParametricLIFNode the way its nir_exchange writes
    them (tau·dt, r = 1 or tau, v_leak = v_reset)."""
    vr = 0.0 if p.v_reset is None else p.v_reset
    if p.tau is None and p.q is None:
        return nir.IF(r=_full(shape, 1.0 / DT), v_threshold=_full(shape, p.v_threshold),
                      v_reset=_full(shape, vr), metadata=meta)
    tau = p.tau if p.q is None else 1.0 / p.q
    return nir.LIF(tau=_full(shape, tau * DT), r=_full(shape, 1.0 if p.decay_input else tau),
                   v_leak=_full(shape, vr), v_threshold=_full(shape, p.v_threshold),
                   v_reset=_full(shape, vr), metadata=meta)


def _rockpool(name: str, p, shape, meta: dict):
    """Rockpool's LIFTorch the way its to_nir writes it (CubaLIF: tau_mem, tau_syn, r =
    tau_mem·exp(−dt/tau_mem)/dt), with dt = 1 and the bias as v_leak (what its from_nir reads
    as the bias)."""
    if p.alpha_mem >= 1.0 or p.alpha_syn >= 1.0 or p.alpha_mem <= 0.0 or p.alpha_syn <= 0.0:
        raise UserError(f"cannot express layer {name} in NIR: a decay of 0 or 1 has no time "
                        "constant")
    tm = -DT / float(np.log(np.float64(p.alpha_mem)))
    ts = -DT / float(np.log(np.float64(p.alpha_syn)))
    return nir.CubaLIF(tau_mem=_full(shape, tm), tau_syn=_full(shape, ts),
                       r=_full(shape, tm * p.alpha_mem / DT), v_leak=_full(shape, p.bias),
                       v_threshold=_full(shape, p.threshold), v_reset=_full(shape, 0.0),
                       w_in=_full(shape, 1.0), metadata=meta)


def _integrator(name: str, p, shape, meta: dict):
    return nir.I(r=_full(shape, 1.0), metadata=meta)


def _li(name: str, p, shape, meta: dict):
    if p.tau_syn_inv != 1.0:
        raise UserError(f"cannot express layer {name} in NIR: its leaky integrator has a "
                        f"synaptic current (tau_syn_inv·dt = {p.tau_syn_inv}), whose update order "
                        "NIR's CubaLI does not fix; only a current-free LI (Norse LIBoxCell) maps")
    return nir.LI(tau=_full(shape, DT / p.tau_mem_inv), r=_full(shape, 1.0),
                  v_leak=_full(shape, 0.0), metadata=meta)


# the NIR-write backend: neuron kind -> node(layer name, parameters, shape, metadata); each
# node also carries the layer's exact edgeprune description
NEURON_NODES = {"lif": _lif, "li": _li, "cuba_lif": _cuba, "decay_lif": _decay,
                "sinabs_lif": _sinabs, "charge_lif": _charge, "rockpool_lif": _rockpool,
                "integrator": _integrator}


def _neuron(b: _Builder, name: str, m: Neuron, x, y, sources):
    node = NEURON_NODES[m.kind.key](name, m.params, x.shape[1:], _exact(m))
    return b.add(name, node, sources)


def _threshold(b: _Builder, name: str, m: Threshold, x, y, sources):
    return b.add(name, nir.Threshold(threshold=_full(x.shape[1:], m.threshold)), sources)


def _scale(b: _Builder, name: str, m: Scale, x, y, sources):
    scale = np.broadcast_to(_np(m.scale), tuple(x.shape[1:])).copy()
    return b.add(name, nir.Scale(scale=scale), sources)


def _sum_pool(b: _Builder, name: str, kernel, stride, padding, out_shape, sources):
    k, s, p = _pair(kernel), _pair(stride), _pair(padding)
    src = b.add(f"{name}.sum", nir.SumPool2d(kernel_size=k, stride=s, padding=p), sources)
    scale = np.full(tuple(out_shape), 1.0 / float(k.prod()), dtype=np.float32)
    return b.add(f"{name}.scale", nir.Scale(scale=scale), src)


def _sum_pool_layer(b: _Builder, name: str, m: SumPool2d, x, y, sources):
    return b.add(name, nir.SumPool2d(kernel_size=_pair(m.kernel_size),
                                     stride=_pair(m.stride or m.kernel_size),
                                     padding=_pair(m.padding)), sources)


def _avg_pool(b: _Builder, name: str, m: nn.AvgPool2d, x, y, sources):
    if m.ceil_mode or m.divisor_override or (not m.count_include_pad and m.padding):
        raise UserError(f"cannot express layer {name} ({m}) in NIR as a sum pool")
    return _sum_pool(b, name, m.kernel_size, m.stride or m.kernel_size, m.padding, y.shape[1:],
                     sources)


def _adaptive_avg_pool(b: _Builder, name: str, m: nn.AdaptiveAvgPool2d, x, y, sources):
    (h, w), (oh, ow) = x.shape[2:], _pair(m.output_size)
    if h % oh or w % ow:
        raise UserError(f"cannot express layer {name} ({m}) in NIR: input {h}x{w} is not a "
                        f"multiple of the output {oh}x{ow}")
    k = (h // oh, w // ow)
    return _sum_pool(b, name, k, k, 0, y.shape[1:], sources)


def _flatten(b: _Builder, name: str, m: nn.Flatten, x, y, sources):
    if m.start_dim != 1 or m.end_dim != -1:
        raise UserError(f"cannot express layer {name} ({m}) in NIR: only full flattening")
    return b.add(name, nir.Flatten(input_type={"input": np.array(x.shape[1:])}, start_dim=0,
                                   end_dim=-1), sources)


def _block(b: _Builder, name: str, m: SpikingBasicBlock, x, y, sources):
    for norm in (m.bn1, m.bn2):
        if isinstance(norm, NORMS):
            raise UserError(f"cannot express layer {name} in NIR: unfolded BatchNorm")
    x1 = m.conv1(x)
    h = _conv(b, f"{name}.conv1", m.conv1, x, x1, sources)
    z1 = m.lif1.step(x1, m.lif1.initial_state(x1))[0]
    h = _neuron(b, f"{name}.lif1", m.lif1, x1, z1, h)
    main = _conv(b, f"{name}.conv2", m.conv2, z1, None, h)
    short, _ = _layer(b, f"{name}.shortcut", m.shortcut, x, sources)
    return _neuron(b, f"{name}.lif2", m.lif2, y, y, main + short)  # NIR sums what enters a node


def _refuse(why: str):
    def emit(b, name, m, x, y, sources):
        raise UserError(f"cannot express layer {name} ({type(m).__name__}) in NIR: {why}")
    return emit


# module class -> emitter(builder, name, module, input example, output example, sources)
EMITTERS = {
    nn.Conv2d: _conv, nn.Conv1d: _conv1d, nn.Linear: _linear,
    **{cls: _neuron for cls in MODULES.values()}, Threshold: _threshold,
    Scale: _scale, nn.AvgPool2d: _avg_pool,
    AvgPool2d: _avg_pool, SumPool2d: _sum_pool_layer,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool, nn.Flatten: _flatten, SpikingBasicBlock: _block,
    nn.MaxPool2d: _refuse("NIR 1.0 has no max pooling; train with --pool avg, or export "
                          "without --nir"),
    **{norm: _refuse("a BatchNorm not directly after a conv/linear cannot be folded")
       for norm in NORMS},
}
PASS_THROUGH = (nn.Identity, nn.Dropout)  # Dropout is the identity in inference


def _layer(b: _Builder, name: str, m: nn.Module, x: torch.Tensor, sources: list[str]):
    """Add the nodes of one layer fed by `sources`; returns (new sources, output example)."""
    if isinstance(m, PASS_THROUGH):
        return sources, x
    if type(m) is nn.Sequential:
        for i, child in enumerate(m):
            sources, x = _layer(b, f"{name}.{i}", child, x, sources)
        return sources, x
    emit = EMITTERS.get(type(m))
    if emit is None:
        raise UserError(f"cannot express layer {name} ({type(m).__name__}) in NIR")
    with torch.no_grad():
        y = m.step(x, m.initial_state(x))[0] if is_stateful(m) else m(x)
    return emit(b, name, m, x, y, sources), y


def _normalize(m: Normalize, rank: int) -> nn.Module | None:
    """The per-channel normalization as a 1×1 convolution (images (C,H,W) or sequences (C,L))
    or a diagonal linear layer (flat inputs); None when it is the identity."""
    std = m.std.view(-1).double()
    mean = m.mean.view(-1).double()
    if bool((std == 1).all()) and bool((mean == 0).all()):
        return None
    c = std.numel()
    if rank == 1:
        layer = nn.Linear(c, c)
        layer.weight.data = torch.diag(1.0 / std).float()
    else:
        layer = (nn.Conv2d if rank == 3 else nn.Conv1d)(c, c, 1)
        layer.weight.data = torch.diag(1.0 / std).view(c, c, *([1] * (rank - 1))).float()
    layer.bias.data = (-mean / std).float()
    return layer


def to_nir(model: SNN, input_shape, timesteps: int) -> nir.NIRGraph:
    """The NIR graph of `model` (BatchNorm folded), type-checked by nir."""
    m = for_export(model)
    b = _Builder()
    sources = b.add("input", nir.Input(input_type={"input": np.array(input_shape)}), [])
    x = torch.zeros((1, *input_shape))
    norm = _normalize(m.normalize, len(input_shape)) if m.encoding == "direct" else None
    if norm is not None:
        sources, x = _layer(b, "normalize", norm, x, sources)
    sources, x = _layer(b, "stem", m.stem, x, sources)
    for i, layer in enumerate(m.body):
        sources, x = _layer(b, f"body.{i}", layer, x, sources)
    b.add("output", nir.Output(output_type={"output": np.array(x.shape[1:])}), sources)
    meta = {"dt": DT, "timesteps": int(timesteps), "encoding": m.encoding,
            "producer": "edgeprune", "output": "per-step logits; predict argmax of the sum over T"}
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta)


def write_nir(model: SNN, input_shape, timesteps: int, path) -> nir.NIRGraph:
    graph = to_nir(model, input_shape, timesteps)
    # HDF5 is built in memory and written by edgeprune: h5py writing to a full disk itself can
    # segfault the process
    buf = io.BytesIO()
    nir.write(buf, graph)
    write_bytes(Path(path), buf.getbuffer())
    return graph

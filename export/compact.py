"""Exact compaction: remove what a ticket made dead, so the exported model is smaller and does
less work while computing the same function.

A ticket's mask often kills whole units. Working on the folded network (BatchNorm folded into
the conv/linear before it, so each unit's pre-activation is `w·x + b`), between consecutive
producers (conv/linear layers) P and N with only per-channel layers between them (LIF, LI,
pooling, flatten, identity, dropout):

- a unit of P that N never reads (all of N's weights from it are zero) is removed from P's
  outputs and N's inputs: its value cannot reach the output;
- a *dead* unit of P (no non-zero incoming weight) still receives its bias, so its
  pre-activation is input-independent and so is everything the per-channel layers make of it:
  a LIF fed a constant spikes in a fixed pattern. The pattern is simulated for the T steps of
  the export; if the unit's output is zero at every step it is simply removed, otherwise its
  exact contribution to N (N's weights applied to the pattern) becomes a bias of N: a plain
  bias when constant over time, else a per-step bias (T, O), or per-step and per-position
  (T, O, H, W) when N is a padded convolution (its border taps see fewer of the constant
  inputs). Then the unit is removed.

A unit of N whose only inputs were dead units has no weights left and a (per-step) bias:
it is dead in the next pass. Passes repeat until nothing changes. The image channels (the
first producer's inputs) and the classifier's outputs are the model's interface and stay.

Removing terms that are exactly zero does not change a sum; moving a constant contribution
into the bias changes only the order of float32 additions. `check` proves the result against
the folded network: every spike of every kept neuron, and the fixed pattern of every dead one,
compared exactly, and the logits.

Models with residual blocks, unfolded BatchNorm or grouped convolutions are left as they are
(`compact` returns None and the reason).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgeprune.channels import PRODUCERS, per_channel
from edgeprune.errors import UserError
from edgeprune.models import SNN, over_time, spiking_layers
from edgeprune.neurons import is_spiking

from .prepare import for_export

class StepBiased(nn.Module):
    """A conv/linear layer plus a bias that depends on the timestep: (T, O) or (T, O, H, W).
    Takes the whole sequence (T, B, ...), like a stateful layer, because it needs t; the
    unrolled graph holds the per-step bias as one constant. No one-step (streaming) form: a
    stream may run longer than the T the bias was computed for."""

    stateful = True

    def __init__(self, layer: nn.Module, step_bias: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("step_bias", step_bias.detach().clone())

    @property
    def weight(self):
        return self.layer.weight

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        y = over_time(self.layer, seq)
        if y.shape[0] != self.step_bias.shape[0]:
            raise UserError(f"this compacted model was exported for T={self.step_bias.shape[0]} "
                            f"(its per-step biases), not T={y.shape[0]}")
        sb = self.step_bias
        sb = sb.view(sb.shape[0], 1, sb.shape[1], *([1] * (y.dim() - 3))) if sb.dim() == 2 \
            else sb.unsqueeze(1)
        return y + sb

    def step(self, x, state):
        raise UserError("a compacted model with per-step biases has no one-step form")

    def initial_state(self, x):
        raise UserError("a compacted model with per-step biases has no one-step form")


@dataclass
class _Producer:
    where: tuple  # (container, index) of the module in the network
    name: str
    kind: str  # conv | linear
    weight: torch.Tensor  # float64 working copy, (O, I, kh, kw) or (O, I)
    bias: torch.Tensor  # float64 (O,)
    step_bias: torch.Tensor | None  # float64 (T, O) or (T, O, H, W)
    keep_out: list  # original indices of the output units still kept
    keep_in: list  # original indices of the input units (of the previous producer) still kept
    module: nn.Module
    segment: list = field(default_factory=list)  # (name, module) per-channel layers after it
    out_spatial: tuple = ()  # (H, W) of its output (conv), () for linear
    group: int = 1  # consumer input features per unit of the previous producer (flatten: H*W)


@dataclass
class Compaction:
    """The compacted network and what changed."""

    model: SNN  # folded (BatchNorm folded, exact spikes), compacted
    timesteps: int
    layers: list  # per producer: name, kind, shape before/after, removed units, step_bias
    constant_spikes: dict  # LIF layer name -> spikes per sample of its removed dead neurons
    dead_patterns: dict  # LIF layer name -> list of (original channel, spikes (T, ...))
    kept_units: dict  # LIF layer name -> original channel indices kept (in order)
    step_biases: bool  # some layer needs a per-step bias (no streaming form)
    passes: int

    def summary(self) -> dict:
        before = sum(int(np.prod(l["shape_before"])) for l in self.layers)
        after = sum(int(np.prod(l["shape_after"])) for l in self.layers)
        return {"layers": self.layers, "weights_before": before, "weights_after": after,
                "step_biases": self.step_biases, "passes": self.passes,
                "constant_spikes_per_sample": self.constant_spikes}


def not_compactable(model: SNN) -> str | None:
    """Why `model` cannot be compacted (None when it can)."""
    for part in (model.stem, model.body):
        for name, m in part.named_children():
            if isinstance(m, PRODUCERS):
                if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"
                                                 or isinstance(m.padding, str)):
                    return f"layer {name}: grouped, non-zero-padded or 'same' convolution"
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return f"layer {name}: a BatchNorm that does not follow a conv/linear"
            elif not per_channel(m):
                return f"layer {name} ({type(m).__name__}): only conv/linear chains with " \
                       "per-channel layers between them are compacted"
    return None


def _layers(model: SNN) -> list:
    """(container, index, name, module) of stem then body, in order."""
    out = []
    for pname, part in (("stem", model.stem), ("body", model.body)):
        for i, (name, m) in enumerate(part.named_children()):
            out.append((part, i, f"{pname}.{name}", m))
    return out


@torch.no_grad()
def _shapes(model: SNN, input_shape) -> dict:
    """Output shape (without batch) of every stem/body layer for one image, T=1."""
    shapes = {}
    handles = []
    for part, _i, name, m in _layers(model):
        def hook(_m, _inp, out, name=name):
            shapes[name] = tuple(out.shape[-3:]) if out.dim() >= 4 else (out.shape[-1],)
        handles.append(m.register_forward_hook(hook))
    try:
        x = torch.zeros((1, *input_shape))
        if model.encoding == "direct":
            model(x, 1)
        else:
            model.forward_spikes(x.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _unit_weights(p: _Producer, unit_pos: int) -> torch.Tensor:
    """The consumer's weights that read input unit at position `unit_pos` (of keep_in)."""
    if p.kind == "conv":
        return p.weight[:, unit_pos]
    g = p.group
    return p.weight[:, unit_pos * g:(unit_pos + 1) * g]


def _drop_inputs(p: _Producer, positions: list[int]) -> None:
    keep = [i for i in range(len(p.keep_in)) if i not in set(positions)]
    if p.kind == "conv":
        p.weight = p.weight[:, keep]
    else:
        g = p.group
        cols = [c for i in keep for c in range(i * g, (i + 1) * g)]
        p.weight = p.weight[:, cols]
    p.keep_in = [p.keep_in[i] for i in keep]


def _drop_outputs(p: _Producer, positions: list[int]) -> None:
    keep = [i for i in range(len(p.keep_out)) if i not in set(positions)]
    p.weight, p.bias = p.weight[keep], p.bias[keep]
    if p.step_bias is not None:
        p.step_bias = p.step_bias[:, keep]
    p.keep_out = [p.keep_out[i] for i in keep]


def _preact(p: _Producer, positions: list[int], T: int) -> torch.Tensor:
    """The input-independent pre-activation (T, 1, n, *spatial) of dead units of `p`."""
    b = p.bias[positions].view(1, 1, -1, *([1] * len(p.out_spatial)))
    b = b.expand(T, 1, len(positions), *p.out_spatial)
    if p.step_bias is None:
        return b.clone()
    sb = p.step_bias[:, positions]
    sb = sb.view(T, 1, len(positions), *([1] * len(p.out_spatial))) if sb.dim() == 2 \
        else sb.unsqueeze(1)
    return (b + sb).clone()


@torch.no_grad()
def _simulate(segment: list, x: torch.Tensor, record: dict) -> torch.Tensor:
    """Run the per-channel layers on a (T, 1, n, ...) sequence in float32, as the network does;
    `record[name]` gets each LIF layer's output spikes."""
    seq = x.to(torch.float32)
    for name, m in segment:
        seq = over_time(m, seq)
        if is_spiking(m):
            record[name] = seq.clone()
    return seq


def _aligned(p: _Producer, candidates: list[int], align: int) -> list[int]:
    """The removal candidates of conv `p` trimmed so that its channel count stays a multiple
    of `align` (ONNX Runtime's blocked NCHWc convolutions need one: on VGG16 a 128 -> 113
    channel compaction ran 19% slower than the uncompacted ticket). Unremoved units are just
    computed, as before: still exact."""
    if align <= 1 or p.kind != "conv" or not candidates:
        return candidates
    left = len(p.keep_out) - len(candidates)
    keep_extra = (-left) % align
    return candidates[:len(candidates) - keep_extra] if keep_extra < len(candidates) else []


def compact(model: SNN, timesteps: int, input_shape,
            align: int = 1) -> tuple[Compaction | None, str | None]:
    """The compacted, folded copy of `model` for `timesteps` steps, or (None, reason).
    `align` > 1 keeps every conv's output channels a multiple of it (for ONNX Runtime)."""
    prepared = for_export(model)
    why = not_compactable(prepared)
    if why:
        return None, why
    shapes = _shapes(prepared, input_shape)
    layers = _layers(prepared)
    prods: list[_Producer] = []
    prev_units = int(input_shape[0])
    pending_segment: list = []
    for part, i, name, m in layers:
        if isinstance(m, PRODUCERS):
            if prods:
                prods[-1].segment = pending_segment
            pending_segment = []
            kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
            w = m.weight.detach().double().clone()
            b = (m.bias.detach().double().clone() if m.bias is not None
                 else torch.zeros(w.shape[0], dtype=torch.float64))
            group = 1
            if kind == "linear" and prods:
                group = w.shape[1] // len(prods[-1].keep_out)
                if group * len(prods[-1].keep_out) != w.shape[1]:
                    return None, f"layer {name}: its inputs are not whole channels"
            elif kind == "linear" and w.shape[1] != prev_units:
                return None, f"layer {name}: reads a flattened image"
            n_in = w.shape[1] // group if kind == "linear" else w.shape[1]
            prods.append(_Producer((part, i), name, kind, w, b, None, list(range(w.shape[0])),
                                   list(range(n_in)), m, out_spatial=tuple(shapes[name][1:])
                                   if kind == "conv" else (), group=group))
        else:
            pending_segment.append((name, m))
    if not prods:
        return None, "no conv/linear layer"
    prods[-1].segment = pending_segment
    before = {p.name: tuple(p.weight.shape) for p in prods}
    T = timesteps
    constant: dict[str, float] = {}
    patterns: dict[str, list] = {}
    removed_dead = {p.name: 0 for p in prods}
    removed_unused = {p.name: 0 for p in prods}
    passes = 0
    changed = True
    while changed:
        changed = False
        passes += 1
        for k in range(len(prods) - 1):
            p, n = prods[k], prods[k + 1]
            # units N never reads
            unused = [j for j in range(len(p.keep_out))
                      if not bool(_unit_weights(n, j).ne(0).any())]
            unused = unused[1:] if len(unused) == len(p.keep_out) else unused  # keep a layer
            unused = _aligned(p, unused, align)
            if unused:
                _drop_outputs(p, unused)
                _drop_inputs(n, unused)
                removed_unused[p.name] += len(unused)
                changed = True
            # dead units: no incoming weight
            flat = p.weight.reshape(p.weight.shape[0], -1)
            dead = [j for j in range(len(p.keep_out)) if not bool(flat[j].ne(0).any())]
            # a layer keeps at least one unit (a zero-width layer does not export)
            dead = dead[1:] if len(dead) == len(p.keep_out) else dead
            dead = _aligned(p, dead, align)
            if not dead:
                continue
            record: dict = {}
            out = _simulate(p.segment, _preact(p, dead, T), record)  # (T, 1, n_dead, ...)
            for lname, spikes in record.items():
                constant[lname] = constant.get(lname, 0.0) + float(spikes.sum())
                for d, j in enumerate(dead):
                    patterns.setdefault(lname, []).append((p.keep_out[j], spikes[:, 0, d].clone()))
            if bool(out.ne(0).any()):
                _add_contribution(n, out.double(), dead, T)
            _drop_outputs(p, dead)
            _drop_inputs(n, dead)
            removed_dead[p.name] += len(dead)
            changed = True
    compacted = copy.deepcopy(prepared)
    layers_info, step_biases = [], False
    kept: dict[str, list] = {}
    new_layers = {name: mod for _p, _i, name, mod in _layers(compacted)}
    for p in prods:
        mod = new_layers[p.name]
        new = _rebuild(p, mod)
        sb = _reduce_step_bias(p)
        if sb is not None:
            new = StepBiased(new, sb)
            step_biases = True
        part = compacted.stem if p.name.startswith("stem.") else compacted.body
        part[int(p.name.split(".", 1)[1])] = new
        if p.name.startswith("stem.") and sb is not None:
            return None, f"layer {p.name}: a per-step bias in the stem"
        for lname, _m in p.segment:
            if is_spiking(_m):
                kept[lname] = list(p.keep_out)
        layers_info.append({"name": p.name, "kind": p.kind, "shape_before": list(before[p.name]),
                            "shape_after": list(new.weight.shape),
                            "removed_dead_outputs": removed_dead[p.name],
                            "removed_unused_outputs": removed_unused[p.name],
                            "step_bias": None if sb is None else list(sb.shape)})
    return Compaction(compacted, T, layers_info, constant, patterns, kept, step_biases,
                      passes), None


def _add_contribution(n: _Producer, pattern: torch.Tensor, dead: list[int], T: int) -> None:
    """Add N's weights applied to the dead units' outputs (T, 1, n_dead, ...) to N's step bias."""
    with torch.no_grad():
        if n.kind == "conv":
            w = n.weight[:, dead]
            m = n.module
            x = pattern.reshape(T, len(dead), *pattern.shape[3:])
            c = nn.functional.conv2d(x, w, None, m.stride, m.padding)  # (T, O, OH, OW)
        else:
            g = n.group
            cols = [c for j in dead for c in range(j * g, (j + 1) * g)]
            c = pattern.reshape(T, -1) @ n.weight[:, cols].T  # (T, O)
    if n.step_bias is None:
        n.step_bias = c
    elif n.step_bias.dim() == c.dim():
        n.step_bias = n.step_bias + c
    else:  # one per-position, one per-channel: broadcast the per-channel one
        small, big = (n.step_bias, c) if n.step_bias.dim() == 2 else (c, n.step_bias)
        n.step_bias = big + small.view(*small.shape, 1, 1)


def _reduce_step_bias(p: _Producer) -> torch.Tensor | None:
    """The step bias in its smallest exact form, moved into the plain bias when constant over
    time; None when there is none left."""
    sb = p.step_bias
    if sb is None:
        return None
    if sb.dim() == 4 and bool((sb == sb[:, :, :1, :1]).all()):
        sb = sb[:, :, 0, 0]
    if sb.dim() == 2 and bool((sb == sb[:1]).all()):
        p.bias = p.bias + sb[0]
        p.step_bias = None
        return None
    return sb.to(torch.float32)


def _rebuild(p: _Producer, old: nn.Module) -> nn.Module:
    w = p.weight.to(torch.float32)
    if p.kind == "conv":
        new = nn.Conv2d(w.shape[1], w.shape[0], old.kernel_size, old.stride, old.padding,
                        bias=True)
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=True)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(p.bias.to(torch.float32))
    # bias is exactly the folded one when nothing was added: keep "no bias" layers bias-free
    if old.bias is None and not bool(p.bias.ne(0).any()):
        new.bias = None
    new.requires_grad_(False)
    return new.eval()


# -- the proof ------------------------------------------------------------------------------------

@torch.no_grad()
def _run_recording(model: SNN, x: torch.Tensor, T: int) -> tuple[torch.Tensor, dict]:
    spikes = {}
    handles = [m.register_forward_hook(
        lambda _m, _i, out, name=name: spikes.__setitem__(name, out.clone()))
        for name, m in spiking_layers(model).items()]
    try:
        steps = model(x, T) if model.encoding == "direct" else model.forward_spikes(x)
    finally:
        for h in handles:
            h.remove()
    return steps, spikes


@torch.no_grad()
def check(model: SNN, c: Compaction, x: torch.Tensor, batch: int = 256) -> dict:
    """Compare the compacted network with the folded original on inputs `x`: per LIF layer,
    spikes of kept neurons and the fixed pattern of removed dead ones must be equal bit for bit;
    logits (summed and per step) as max |difference|. Neurons removed because nothing reads
    them are not compared (their spikes cannot reach the output)."""
    folded = for_export(model)
    T = c.timesteps
    mismatches: dict[str, int] = {}
    compared: dict[str, int] = {}
    max_diff = 0.0
    agree, scale = 0, 0.0
    n = x.shape[1] if x.dim() == 5 else x.shape[0]
    for s in range(0, n, batch):
        xb = x[:, s:s + batch] if x.dim() == 5 else x[s:s + batch]
        ref_steps, ref_spikes = _run_recording(folded, xb, T)
        got_steps, got_spikes = _run_recording(c.model, xb, T)
        max_diff = max(max_diff, float((ref_steps - got_steps).abs().max()),
                       float((ref_steps.sum(0) - got_steps.sum(0)).abs().max()))
        scale = max(scale, float(ref_steps.sum(0).abs().max()))
        agree += int((ref_steps.sum(0).argmax(-1) == got_steps.sum(0).argmax(-1)).sum())
        for name, ref in ref_spikes.items():
            got = got_spikes[name]
            keep = c.kept_units.get(name)
            if keep is None:  # a LIF after the last producer or with nothing removed
                mm = int((ref != got).sum()) if ref.shape == got.shape else int(ref.numel())
                cnt = int(ref.numel())
            else:
                mm = int((ref[:, :, keep] != got).sum())
                cnt = int(got.numel())
                for unit, pattern in c.dead_patterns.get(name, []):
                    want = pattern.view(T, 1, *pattern.shape[1:]).expand_as(ref[:, :, unit])
                    mm += int((ref[:, :, unit] != want).sum())
                    cnt += int(want.numel())
            mismatches[name] = mismatches.get(name, 0) + mm
            compared[name] = compared.get(name, 0) + cnt
    return {"inputs": n, "max_abs_logit_diff": max_diff, "logit_scale": scale,
            "prediction_agreement": agree / n,
            "spike_mismatches": sum(mismatches.values()), "spike_mismatches_per_layer": mismatches,
            "spikes_compared": sum(compared.values())}

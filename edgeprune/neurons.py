"""The torch modules of the neuron kinds (edgeprune.neuron_kinds), driven by an explicit time loop.

Each module runs its kind's pure step function on tensors, with Norse's threshold functions as
the spike (Heaviside forward, a surrogate gradient backward; "heaviside" for export). The box
LIF is Norse's `lif_box_feed_forward_step` (a LIF neuron without synaptic current) with dt = 1,
so that tau_mem_inv is the fraction of the input taken per step:
    v[t] = (1 - tau_mem_inv) * v[t-1] + tau_mem_inv * x[t]        (paper: 0.25 / 0.75)
    z[t] = H(v[t] - v_th);  v[t] <- v_reset where z[t] = 1         (hard reset, or subtract)
State is explicit: it goes in and comes out; modules hold parameters only.

Training runs the box LIF's whole recurrence over T as one autograd function
(edgeprune.fused_lif): the same float operations forward, and backpropagation through time
written out, so autograd records one node per layer instead of a dozen per timestep. `step`
and inference keep the step function.

Every module follows the layer protocol (stateful, `forward` over a (T, B, ...) sequence from a
zero state, `step(x, state)`, `initial_state`, `state_names`: one tensor per name, a bare
tensor when there is one) and says what it is with attributes the rest of the library reads
instead of testing classes: `spiking` (its output is 0/1 spikes: spike counts, spike rates,
compaction's fixed patterns) and `spike_exactly()` (plain Heaviside for export).
"""
from __future__ import annotations

import torch
from norse.torch.functional.threshold import threshold
from torch import nn

from .config import NeuronParams
from .errors import UserError
from .fused_lif import lif_sequence
from .neuron_kinds import KINDS, CubaParams, NeuronKind


def spike(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """H(x) = 1 where x > 0 (Norse's threshold functions: the surrogate only shapes the
    gradient; "heaviside" has none, for export and inference)."""
    return threshold(x, surrogate, alpha)


def _fp32(seq: torch.Tensor) -> torch.Tensor:
    """Under autocast the membrane stays fp32."""
    return seq.float() if seq.dtype in (torch.float16, torch.bfloat16) else seq


class Neuron(nn.Module):
    """A layer of neurons of one kind (`kind`, set by each subclass), one parameter set per
    layer. `forward` runs `step` T times from `initial_state` (autograd through the loop)."""

    kind: NeuronKind
    stateful = True
    elementwise = True  # one neuron per input element
    _record = None  # a list while `margins` runs

    def __init__(self, params=None):
        super().__init__()
        self.params = self.kind.params() if params is None else params
        self.method = getattr(self.params, "surrogate", "heaviside")
        self.state_names = self.kind.states(self.params)  # the exporters flatten in this order

    @property
    def spiking(self) -> bool:
        return self.kind.spiking

    def spike_exactly(self) -> None:
        """Use a plain Heaviside (no autograd function): for export and pure inference."""
        self.method = "heaviside"

    def _spike(self, u: torch.Tensor) -> torch.Tensor:
        """Spikes where the potential minus the threshold `u` is > 0."""
        if self._record is not None:
            self._record.append(u)
        return spike(u, self.method, self.params.alpha)

    def initial_state(self, x: torch.Tensor):
        zeros = tuple(torch.zeros_like(x) for _ in self.state_names)
        return zeros if len(zeros) > 1 else zeros[0]

    def step(self, x: torch.Tensor, state):
        one = len(self.state_names) == 1
        y, new = self.kind.step(x, (state,) if one else state, self.params, self._spike)
        return y, (new[0] if one else new)

    def forward(self, seq: torch.Tensor, state=None) -> torch.Tensor:
        seq = _fp32(seq)
        state, out = self.initial_state(seq[0]) if state is None else state, []
        for t in range(seq.shape[0]):
            y, state = self.step(seq[t], state)
            out.append(y)
        return torch.stack(out)

    @torch.no_grad()
    def margins(self, seq: torch.Tensor) -> torch.Tensor:
        """(T, B, ...) potential minus threshold at each spike decision on `seq` (how close a
        neuron came to flipping: export's parity report counts the near ones)."""
        self._record = []
        try:
            self.forward(seq)
            return torch.stack(self._record)
        finally:
            self._record = None

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())


class LIF(Neuron):
    """The box LIF (the built-in architectures' neuron); state v."""

    kind = KINDS["lif"]
    fused = True  # training runs the recurrence as one autograd node (False: the step loop)

    def forward(self, seq: torch.Tensor, v0: torch.Tensor | None = None) -> torch.Tensor:
        if (self.fused and v0 is None and seq.requires_grad and torch.is_grad_enabled()
                and self.method == self.params.surrogate and not torch.jit.is_tracing()):
            return lif_sequence(_fp32(seq), self.params)
        return super().forward(seq, v0)


class LI(Neuron):
    """Leaky integrators (no spikes): the membrane potential is the output, typically a
    readout's per-step logits; state (v, i)."""

    kind = KINDS["li"]


class CubaLIF(Neuron):
    """Current-based LIF neurons (Norse's LIFCell); state (v, i)."""

    kind = KINDS["cuba_lif"]


class DecayLIF(Neuron):
    """Decay-form LIF neurons (snnTorch's Leaky / Synaptic); state mem, or (syn, mem)."""

    kind = KINDS["decay_lif"]


class SinabsLIF(Neuron):
    """Sinabs' IAF / LIF (multi- or single-spike, subtract or value reset); state v. Its
    output is a spike count."""

    kind = KINDS["sinabs_lif"]


class ChargeLIF(Neuron):
    """SpikingJelly's IFNode / LIFNode / ParametricLIFNode (charge, fire at >= v_threshold,
    hard or soft reset); state v."""

    kind = KINDS["charge_lif"]


class RockpoolLIF(Neuron):
    """Rockpool's LIFTorch (current and membrane decay, bias, up to max_spikes spikes a step,
    subtractive reset); state (v, i). Its output is a spike count."""

    kind = KINDS["rockpool_lif"]


class Integrator(Neuron):
    """Perfect integrators without spikes (NIR's Integrator): v' = v + x, the output is v'."""

    kind = KINDS["integrator"]


# the torch backend: kind key -> its module
MODULES: dict[str, type[Neuron]] = {c.kind.key: c for c in (LIF, LI, CubaLIF, DecayLIF,
                                                            SinabsLIF, ChargeLIF, RockpoolLIF,
                                                            Integrator)}


class Threshold(nn.Module):
    """Stateless spikes: [x > threshold] (NIR's Threshold)."""

    spiking = True
    elementwise = True

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold, self.method = threshold, "super"

    def spike_exactly(self) -> None:
        self.method = "heaviside"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x - self.threshold, self.method, 10.0)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class Scale(nn.Module):
    """y = x · scale (NIR's Scale; an input gain of an imported neuron): one value, or one per
    feature (the shape of x without the batch), kept as a buffer."""

    def __init__(self, shape=()):
        super().__init__()
        self.register_buffer("scale", torch.ones(tuple(shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"shape={list(self.scale.shape)}"


def is_spiking(m: nn.Module) -> bool:
    """A layer whose output is 0/1 spikes."""
    return getattr(m, "spiking", False)


def neuron_layer(p: NeuronParams) -> nn.Module:
    """The neuron layer of the built-in architectures: the box LIF, or with `tau_syn_inv` the
    current-based LIF (same leak, threshold, reset and surrogate)."""
    if p.tau_syn_inv is None:
        return LIF(p)
    if p.reset_grad != "through":
        raise UserError("--reset-grad detach is for the box LIF: leave --tau-syn-inv unset")
    return CubaLIF(CubaParams(tau_mem_inv=p.tau_mem_inv, tau_syn_inv=p.tau_syn_inv, v_th=p.v_th,
                              v_reset=p.v_reset, reset=p.reset, surrogate=p.surrogate,
                              alpha=p.alpha))

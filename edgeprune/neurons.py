"""LIF neurons: Norse's pure step function, driven by an explicit time loop.

The update is Norse's `lif_box_feed_forward_step` (a LIF neuron without synaptic current), with
dt = 1 so that tau_mem_inv is the fraction of the input taken per step:
    v[t] = (1 - tau_mem_inv) * v[t-1] + tau_mem_inv * x[t]        (paper: 0.25 / 0.75)
    z[t] = H(v[t] - v_th);  v[t] <- v_reset where z[t] = 1         (hard reset, or subtract)
State is an explicit tensor that goes in and comes out; modules hold parameters only.

Training runs the whole recurrence over T as one autograd function (edgeprune.fused_lif): the
same float operations forward, and backpropagation through time written out, so autograd
records one node per layer instead of a dozen per timestep. `step` and inference keep Norse's
function.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
from norse.torch.functional.lif_box import (LIFBoxFeedForwardState, LIFBoxParameters,
                                            lif_box_feed_forward_step)
from norse.torch.functional.leaky_integrator import (LIParameters, LIState,
                                                     li_feed_forward_step)
from norse.torch.functional.reset import reset_subtract, reset_value
from norse.torch.functional.threshold import threshold
from torch import nn

from .config import SURROGATES, NeuronParams
from .errors import UserError
from .fused_lif import lif_sequence

RESET_FUNCTIONS = {"value": reset_value, "subtract": reset_subtract}
SURROGATES_ALL = SURROGATES + ("heaviside",)


def lif_parameters(p: NeuronParams, method: str | None = None) -> LIFBoxParameters:
    """Norse's parameters for `p` (Norse keeps them out of state_dict: the checkpoint records
    NeuronParams instead)."""
    return LIFBoxParameters(
        tau_mem_inv=torch.as_tensor(p.tau_mem_inv), v_leak=torch.as_tensor(0.0),
        v_th=torch.as_tensor(p.v_th), v_reset=torch.as_tensor(p.v_reset),
        method=method or p.surrogate, alpha=torch.as_tensor(p.alpha),
        reset_method=RESET_FUNCTIONS[p.reset])


def lif_step(x: torch.Tensor, v: torch.Tensor, p: LIFBoxParameters) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep: input current and membrane potential in, spikes and new potential out."""
    z, state = lif_box_feed_forward_step(x, LIFBoxFeedForwardState(v=v), p, dt=1.0)
    return z, state.v


class LIF(nn.Module):
    """A layer of LIF neurons. `forward` takes a whole sequence (T, B, ...) from a zero initial
    state (or `v0`); `step` advances one timestep with the state passed in and out."""

    stateful = True
    spiking = True
    elementwise = True  # one neuron per input element, one parameter set per layer
    fused = True  # training runs the recurrence as one autograd node (False: Norse's loop)

    def __init__(self, params: NeuronParams = NeuronParams()):
        super().__init__()
        self.params = params
        self.p = lif_parameters(params)

    def spike_exactly(self) -> None:
        """Use a plain Heaviside (no autograd function): for export and pure inference."""
        self.p = lif_parameters(self.params, method="heaviside")

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def step(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lif_step(x, v, self.p)

    def forward(self, seq: torch.Tensor, v0: torch.Tensor | None = None) -> torch.Tensor:
        if seq.dtype in (torch.float16, torch.bfloat16):  # autocast: the membrane stays fp32
            seq = seq.float()
        if (self.fused and v0 is None and seq.requires_grad and torch.is_grad_enabled()
                and self.p.method == self.params.surrogate and not torch.jit.is_tracing()):
            return lif_sequence(seq, self.params)
        v = torch.zeros_like(seq[0]) if v0 is None else v0
        out = []
        for t in range(seq.shape[0]):
            z, v = lif_step(seq[t], v, self.p)
            out.append(z)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())


# -- the neuron kinds beyond the box LIF -------------------------------------------------------
#
# Every neuron class below follows the layer protocol (stateful, `forward` over a (T, B, ...)
# sequence from a zero state, `step(x, state)`, `initial_state`, `state_names` when the state
# is several tensors) and says what it is with class attributes that the rest of the library
# reads instead of testing classes: `spiking` (its output is 0/1 spikes: spike counts, spike
# rates, compaction's fixed patterns) and `spike_exactly()` (plain Heaviside for export).
# Parameters are scalars kept as Python floats that are exactly float32 values, and each
# update is written in its source framework's float32 operation order, so an imported neuron
# is bit-identical to the original.

def spike(x: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """H(x) = 1 where x > 0 (Norse's threshold functions: the surrogate only shapes the
    gradient; "heaviside" has none, for export and inference)."""
    return threshold(x, surrogate, alpha)


def _f32(v: float) -> float:
    """v rounded to float32 (kept as a Python float): the value the framework computes with."""
    return float(torch.tensor(float(v), dtype=torch.float32))


def _check_surrogate(surrogate: str) -> None:
    if surrogate not in SURROGATES_ALL:
        raise UserError(f"unknown surrogate {surrogate!r}: choose {', '.join(SURROGATES_ALL)}")


class _StepLoop(nn.Module):
    """forward = `step` T times from `initial_state` (autograd through the loop)."""

    stateful = True
    spiking = True
    elementwise = True
    _record = None  # a list while `margins` runs

    def _spike(self, u: torch.Tensor, alpha: float) -> torch.Tensor:
        """Spikes where the potential minus the threshold `u` is > 0."""
        if self._record is not None:
            self._record.append(u)
        return spike(u, self.method, alpha)

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

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.dtype in (torch.float16, torch.bfloat16):  # autocast: the membrane stays fp32
            seq = seq.float()
        state, out = self.initial_state(seq[0]), []
        for t in range(seq.shape[0]):
            y, state = self.step(seq[t], state)
            out.append(y)
        return torch.stack(out)

    def spike_exactly(self) -> None:
        self.method = "heaviside"

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())


# -- leaky integrator readout (imported Norse models) ----------------------------------------

@dataclass(frozen=True)
class LIParams:
    """Norse's leaky integrator with dt = 1 (both rates are Norse's dt × tau_*_inv):
        i_jump = i + x;  v' = v + tau_mem_inv·(−v + i_jump);  i' = (1 − tau_syn_inv)·i_jump
    tau_syn_inv = 1 is a leaky integrator without synaptic current (Norse's LIBoxCell)."""

    tau_mem_inv: float = 0.1
    tau_syn_inv: float = 1.0

    def __post_init__(self):
        for name in ("tau_mem_inv", "tau_syn_inv"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise UserError(f"leaky integrator {name} (times dt) must be in (0, 1], got {v}")

    def to_dict(self) -> dict:
        return asdict(self)

    def norse(self) -> LIParameters:
        return LIParameters(tau_syn_inv=torch.as_tensor(self.tau_syn_inv),
                            tau_mem_inv=torch.as_tensor(self.tau_mem_inv),
                            v_leak=torch.as_tensor(0.0))


class LI(_StepLoop):
    """A layer of leaky integrators (no spikes): the membrane potential is the output, typically
    a readout's per-step logits. State (v, i) is explicit; both start at 0."""

    spiking = False
    state_names = ("v", "i")  # the exporters flatten the state in this order

    def __init__(self, params: LIParams = LIParams()):
        super().__init__()
        self.params = params
        self.p = params.norse()

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(x), torch.zeros_like(x)

    def step(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
        v, s = li_feed_forward_step(x, LIState(*state), self.p, dt=1.0)
        return v, (s.v, s.i)


@dataclass(frozen=True)
class CubaParams:
    """A current-based LIF: Norse's LIFCell (`lif_feed_forward_step`) with dt folded into the
    rates (a = dt·tau_mem_inv, b = dt·tau_syn_inv, each the float32 product Norse computes):
        i_j = i + x;  v' = v + a·((0 − v) + i_j);  i' = i_j + (−b)·i_j
        z = [v' > v_th];  v ← v_reset where z ("value"), or v' − v_th ("subtract")
    NIR's CubaLIF with forward Euler (current first) is this with a = dt/tau_mem,
    b = dt/tau_syn and an input gain r·w_in·dt/tau_syn (a Scale before it when not 1)."""

    tau_mem_inv: float = 0.1
    tau_syn_inv: float = 0.2
    v_th: float = 1.0
    v_reset: float = 0.0
    reset: str = "value"
    surrogate: str = "super"
    alpha: float = 100.0

    def __post_init__(self):
        for name in ("tau_mem_inv", "tau_syn_inv"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise UserError(f"current-based LIF {name} (times dt) must be in (0, 1], got {v}")
        if self.reset not in ("value", "subtract"):
            raise UserError(f"current-based LIF reset must be value or subtract, got {self.reset!r}")
        _check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        return asdict(self)


class CubaLIF(_StepLoop):
    """A layer of current-based LIF neurons; state (v, i), both 0 at the start."""

    state_names = ("v", "i")

    def __init__(self, params: CubaParams = CubaParams()):
        super().__init__()
        self.params, self.method = params, params.surrogate
        p = params
        self._a, self._nb = p.tau_mem_inv, -p.tau_syn_inv

    def initial_state(self, x: torch.Tensor):
        return torch.zeros_like(x), torch.zeros_like(x)

    def step(self, x: torch.Tensor, state):
        v, i = state
        p = self.params
        i_j = i + x
        vd = v + self._a * ((0.0 - v) + i_j)
        i_new = i_j + self._nb * i_j
        z = self._spike(vd - p.v_th, p.alpha)
        if p.reset == "subtract":
            v_new = vd - z * p.v_th
        else:
            v_new = (1 - z) * vd + z * p.v_reset
        return z, (v_new, i_new)


DECAY_RESETS = ("subtract", "zero", "none")


@dataclass(frozen=True)
class DecayParams:
    """A LIF written in decay form, as snnTorch's Leaky and Synaptic compute it:
        Leaky:     r = [mem > th];  mem' = beta·mem + x − r·th            (subtract)
                                    mem' = beta·((1 − r)·mem) + x         (zero)
        Synaptic:  syn' = alpha_syn·syn + x;  m = beta·mem + syn'
                                    mem' = m − r·th  (subtract),  m − m·r  (zero)
        spike = [mem' > th]
    r is the spike of the *previous* step: snnTorch subtracts the threshold one step after a
    spike (`reset_delay`, its default). Without the delay the reset also applies at once:
    mem' −= (spike − r)·th (subtract) or (spike − r)·mem' (zero). "none" never resets.
    NIR's IF (dv/dt = R·I) is this with beta = 1."""

    beta: float = 0.9
    threshold: float = 1.0
    alpha_syn: Optional[float] = None  # Synaptic's current decay; None: Leaky (no current)
    reset: str = "subtract"
    reset_delay: bool = True
    surrogate: str = "super"
    alpha: float = 10.0

    def __post_init__(self):
        for name in ("beta", "alpha_syn"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise UserError(f"decay-form LIF {name} must be in [0, 1], got {v}")
        if self.reset not in DECAY_RESETS:
            raise UserError(f"decay-form LIF reset must be one of {', '.join(DECAY_RESETS)}, "
                            f"got {self.reset!r}")
        _check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        return asdict(self)


class DecayLIF(_StepLoop):
    """A layer of decay-form LIF neurons; state mem (Leaky) or (syn, mem) (Synaptic)."""

    def __init__(self, params: DecayParams = DecayParams()):
        super().__init__()
        self.params, self.method = params, params.surrogate
        self.synaptic = params.alpha_syn is not None
        if self.synaptic:
            self.state_names = ("syn", "mem")

    def initial_state(self, x: torch.Tensor):
        return (torch.zeros_like(x), torch.zeros_like(x)) if self.synaptic else torch.zeros_like(x)

    def step(self, x: torch.Tensor, state):
        p = self.params
        syn, mem = state if self.synaptic else (None, state)
        th = p.threshold
        r = (mem - th > 0).to(mem.dtype)  # snnTorch's detached reset signal
        if self.synaptic:
            syn = p.alpha_syn * syn + x
            m = p.beta * mem + syn
            if p.reset == "subtract":
                m = m - r * th
            elif p.reset == "zero":
                m = m - m * r
        elif p.reset == "zero":
            m = p.beta * ((1 - r) * mem) + x
        else:
            m = p.beta * mem + x
            if p.reset == "subtract":
                m = m - r * th
        z = self._spike(m - th, p.alpha)
        if not p.reset_delay and p.reset != "none":
            do = z - r
            m = m - do * th if p.reset == "subtract" else m - do * m
        return z, ((syn, m) if self.synaptic else m)


class Integrator(_StepLoop):
    """Perfect integrators without spikes (NIR's Integrator, dv/dt = R·I): v' = v + x; the
    output is v'. A gain dt·R stands in a Scale before it."""

    spiking = False
    params = None

    def initial_state(self, x: torch.Tensor):
        return torch.zeros_like(x)

    def step(self, x: torch.Tensor, v: torch.Tensor):
        v = v + x
        return v, v

    def extra_repr(self) -> str:
        return ""


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
    return CubaLIF(CubaParams(tau_mem_inv=p.tau_mem_inv, tau_syn_inv=p.tau_syn_inv, v_th=p.v_th,
                              v_reset=p.v_reset, reset=p.reset, surrogate=p.surrogate,
                              alpha=p.alpha))

"""LIF neurons: Norse's pure step function, driven by an explicit time loop.

The update is Norse's `lif_box_feed_forward_step` (a LIF neuron without synaptic current), with
dt = 1 so that tau_mem_inv is the fraction of the input taken per step:
    v[t] = (1 - tau_mem_inv) * v[t-1] + tau_mem_inv * x[t]        (paper: 0.25 / 0.75)
    z[t] = H(v[t] - v_th);  v[t] <- v_reset where z[t] = 1         (hard reset, or subtract)
State is an explicit tensor that goes in and comes out; modules hold parameters only.

Training runs the whole recurrence over T as one autograd function (`lif_sequence`): the same
float operations forward, and backpropagation through time written out, so autograd records
one node per layer instead of a dozen per timestep. `step` and inference keep Norse's function.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from norse.torch.functional.lif_box import (LIFBoxFeedForwardState, LIFBoxParameters,
                                            lif_box_feed_forward_step)
from norse.torch.functional.leaky_integrator import (LIParameters, LIState,
                                                     li_feed_forward_step)
from norse.torch.functional.reset import reset_subtract, reset_value
from torch import nn

from .config import NeuronParams
from .errors import UserError

RESET_FUNCTIONS = {"value": reset_value, "subtract": reset_subtract}


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


# Surrogate derivatives dH/du at u = v - v_th, exactly as Norse's threshold functions define them
# (SuperSpike's ignores alpha; HeaviTanh's omits the k factor).
SURROGATE_GRADS = {
    "super": lambda u, k: 1.0 / (u.abs() + 1.0).pow(2),
    "triangle": lambda u, k: k * torch.relu(1 - u.abs()),
    "tanh": lambda u, k: 1 - (u * k).tanh().pow(2),
    "circ": lambda u, k: (-(u.pow(2) / (2 * (k ** 2 + u.pow(2)).pow(1.5)))
                          + 1 / (2 * (k ** 2 + u.pow(2)).sqrt())) * 2 * k,
    "heavi_erfc": lambda u, k: (2 * torch.exp(-(k * u).pow(2))) / (torch.pi ** 0.5),
}


class _LIFSequence(torch.autograd.Function):
    """T steps of the LIF update in one node. Forward: Norse's arithmetic, so spikes are
    bit-identical to the step loop: vd = v + a·(x - v) (Norse adds v_leak = 0 first, which
    changes only the sign of a zero), z = vd > v_th (the same as vd - v_th > 0 in IEEE floats),
    and the reset as a select (Norse's (1 - z)·vd + z·r with z in {0, 1}). Backward: BPTT
    through those expressions, with the reset's dependence on the spike, as autograd
    differentiates Norse's reset."""

    @staticmethod
    def forward(ctx, seq: torch.Tensor, p: NeuronParams) -> torch.Tensor:
        v = torch.zeros_like(seq[0])
        spikes, decayed = torch.empty_like(seq), torch.empty_like(seq)
        d = torch.empty_like(v)
        for t in range(seq.shape[0]):
            vd = decayed[t]
            torch.sub(seq[t], v, out=d)
            d.mul_(p.tau_mem_inv)
            torch.add(v, d, out=vd)
            fired = vd > p.v_th
            spikes[t] = fired
            v = torch.where(fired, p.v_reset, vd) if p.reset == "value" else \
                torch.where(fired, vd - p.v_th, vd)
        ctx.save_for_backward(spikes, decayed)
        ctx.p = p
        return spikes

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor):
        spikes, decayed = ctx.saved_tensors
        p = ctx.p
        surrogate = SURROGATE_GRADS[p.surrogate]
        grad_x = torch.empty_like(decayed)
        gv = None  # dL/dv after step t, flowing back from step t+1
        for t in range(decayed.shape[0] - 1, -1, -1):
            vd, z = decayed[t], spikes[t]
            s = surrogate(vd - p.v_th, p.alpha)
            gvd = grad_z[t] * s
            if gv is not None:
                if p.reset == "value":  # v = (1 - z)·vd + z·v_reset
                    dv_dvd = (1 - z).add_((p.v_reset - vd).mul_(s))
                else:  # v = vd - z·v_th
                    dv_dvd = (s * -p.v_th).add_(1)
                gvd.add_(gv.mul_(dv_dvd))
            torch.mul(gvd, p.tau_mem_inv, out=grad_x[t])
            gv = gvd.mul_(1 - p.tau_mem_inv)
        return grad_x, None


def lif_sequence(seq: torch.Tensor, p: NeuronParams) -> torch.Tensor:
    """Spikes (T, B, ...) of a LIF layer from a zero state, as one autograd node."""
    return _LIFSequence.apply(seq, p)


class LIF(nn.Module):
    """A layer of LIF neurons. `forward` takes a whole sequence (T, B, ...) from a zero initial
    state (or `v0`); `step` advances one timestep with the state passed in and out."""

    stateful = True
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


class LI(nn.Module):
    """A layer of leaky integrators (no spikes): the membrane potential is the output, typically
    a readout's per-step logits. State (v, i) is explicit; both start at 0."""

    stateful = True
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

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.dtype in (torch.float16, torch.bfloat16):  # autocast: the readout stays fp32
            seq = seq.float()
        state, out = self.initial_state(seq[0]), []
        for t in range(seq.shape[0]):
            y, state = self.step(seq[t], state)
            out.append(y)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())

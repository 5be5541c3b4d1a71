"""LIF neurons: Norse's pure step function, driven by an explicit time loop.

The update is Norse's `lif_box_feed_forward_step` (a LIF neuron without synaptic current), with
dt = 1 so that tau_mem_inv is the fraction of the input taken per step:
    v[t] = (1 - tau_mem_inv) * v[t-1] + tau_mem_inv * x[t]        (paper: 0.25 / 0.75)
    z[t] = H(v[t] - v_th);  v[t] <- v_reset where z[t] = 1         (hard reset, or subtract)
State is an explicit tensor that goes in and comes out; modules hold parameters only.
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


class LIF(nn.Module):
    """A layer of LIF neurons. `forward` takes a whole sequence (T, B, ...) from a zero initial
    state (or `v0`); `step` advances one timestep with the state passed in and out."""

    stateful = True

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
        state, out = self.initial_state(seq[0]), []
        for t in range(seq.shape[0]):
            y, state = self.step(seq[t], state)
            out.append(y)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items())

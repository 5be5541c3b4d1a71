"""snnTorch layers as edgeprune layer descriptions (the framework table for importers/code.py).

Leaky and Synaptic become `decay_lif` (edgeprune.neurons.DecayLIF), which computes what they
compute in their float32 operation order: mem' = beta·mem + x − r·th with r the *previous*
step's spike (snnTorch's delayed reset; `reset_delay=False` also supported), reset by
subtraction, to zero, or none. beta, alpha and threshold are read after the weights are loaded
(snnTorch keeps them as buffers or parameters in the state_dict) and clamped to [0, 1] as
snnTorch's forward does. Per-neuron values must all be equal.

snnTorch networks come as an nn.Sequential: with `init_hidden=True` the neurons hold their own
state (reset before every run, as `snntorch.utils.reset` does); without it the importer steps
the children itself and passes each neuron its state explicitly. The last neuron may be
`output=True` (it returns spikes and membrane: the spikes are the output).
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..neuron_kinds import DecayParams

NAME = "snntorch"
CELL_NAMES = ("Leaky", "Synaptic")
CONTAINERS: tuple[str, ...] = ()
RESETS = {0: "subtract", 1: "zero", 2: "none"}


def classes() -> dict[str, type]:
    try:
        import snntorch
    except ImportError:
        return {}
    return {n: getattr(snntorch, n) for n in CELL_NAMES if hasattr(snntorch, n)}


def version() -> str:
    import snntorch

    return getattr(snntorch, "__version__", "?")


def _scalar(m, name: str, low: float | None = 0.0, high: float | None = 1.0) -> float:
    t = torch.as_tensor(getattr(m, name)).detach().float()
    if low is not None:
        t = t.clamp(low, high)  # snnTorch clamps beta and alpha in every forward
    if t.numel() == 0 or not bool((t == t.flatten()[0]).all()):
        raise UserError(f"its {name} differs between neurons; only one value per layer is "
                        "supported")
    return float(t.flatten()[0])


def _neuron(m, synaptic: bool) -> dict:
    for flag in ("inhibition", "state_quant"):
        if getattr(m, flag, False):
            raise UserError(f"{flag} is not supported")
    if _scalar(m, "graded_spikes_factor", None) != 1.0:
        raise UserError("graded spikes (graded_spikes_factor != 1) are not supported")
    params = DecayParams(beta=_scalar(m, "beta"), threshold=_scalar(m, "threshold", None),
                         alpha_syn=_scalar(m, "alpha") if synaptic else None,
                         reset=RESETS[int(m.reset_mechanism_val)],
                         reset_delay=bool(getattr(m, "reset_delay", True)))
    return {"type": "decay_lif", "neuron": params.to_dict()}


CELLS = {"Leaky": lambda m: _neuron(m, False), "Synaptic": lambda m: _neuron(m, True)}


def reset(module) -> None:
    """Zero every neuron's hidden state (snntorch.utils.reset) before a run."""
    for m in module.modules():
        if type(m).__name__ in CELL_NAMES and hasattr(m, "reset_mem"):
            m.reset_mem()


def step(m, x, state):
    """One timestep of a Leaky/Synaptic: (spikes, new state). With init_hidden the neuron keeps
    its state itself (state stays None)."""
    if m.init_hidden:
        out = m(x)
        return (out[0] if isinstance(out, tuple) else out), None
    if type(m).__name__ == "Synaptic":
        syn, mem = state if state is not None else (None, None)
        spk, syn, mem = m(x, syn, mem)
        return spk, (syn, mem)
    spk, mem = m(x, state)
    return spk, mem


def run_container(user, x, state):
    raise NotImplementedError

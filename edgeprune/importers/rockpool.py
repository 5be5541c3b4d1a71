"""Rockpool's torch modules as edgeprune layer descriptions (the framework table for
importers/code.py).

LIFTorch becomes `rockpool_lif` (edgeprune.neuron_kinds.RockpoolParams): its forward's order,
with the float32 decays Rockpool computes (its `alpha` and `beta`, from tau_mem / tau_syn and
dt, whatever its leak_mode), its bias, threshold and max_spikes_per_dt. One value per layer:
a layer whose neurons have different time constants, biases or thresholds (LIFTorch trains
them unless they are `Constant`) is refused, as are recurrence, noise, several synapses per
neuron and other spike functions. LinearTorch becomes a linear layer (its weight is stored
(in, out): transposed). A TorchSequential is the container.

Rockpool runs a whole sequence in one call, (batch, time, channels): the reference run calls
the user's module that way (`run_sequence`), from `reset_state()`, with each image flattened to
channels. The import's layer list starts with that flatten (`INPUT_LAYERS`).
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..neuron_kinds import RockpoolParams

NAME = "rockpool"
CELL_NAMES = ("LIFTorch",)
CONTAINERS = ("TorchSequential",)
LAYER_NAMES = ("LinearTorch",)
INPUT_LAYERS = ({"type": "flatten", "start": 1, "end": -1},)  # (B, C, H, W) -> channels


def classes() -> dict[str, type]:
    try:
        from rockpool.nn.combinators.sequential import TorchSequential
        from rockpool.nn.modules import LIFTorch, LinearTorch
    except ImportError:
        return {}
    return {"LIFTorch": LIFTorch, "LinearTorch": LinearTorch, "TorchSequential": TorchSequential}


def version() -> str:
    import importlib.metadata

    return importlib.metadata.version("rockpool")


def _one(m, name: str) -> float:
    t = torch.as_tensor(getattr(m, name)).detach().float().flatten()
    if t.numel() == 0 or not bool((t == t[0]).all()):
        raise UserError(f"its {name} differs between neurons; only one value per layer is "
                        "supported (make it a rockpool.parameters.Constant to keep it so in "
                        "training)")
    return float(t[0])


def _lif(m) -> dict:
    from rockpool.nn.modules.torch.lif_torch import StepPWL

    if m._has_rec:
        raise UserError("recurrent weights (has_rec) are not supported")
    if float(m.noise_std) != 0.0:
        raise UserError(f"noise_std {float(m.noise_std)}: only a noise-free LIFTorch is "
                        "supported")
    if m.n_synapses != 1:
        raise UserError(f"{m.n_synapses} synapses per neuron: only one is supported")
    if getattr(m.spike_generation_fn, "__self__", None) is not StepPWL:
        raise UserError("only the StepPWL spike function (LIFTorch's default) is supported")
    params = RockpoolParams(alpha_mem=_one(m, "alpha"), alpha_syn=_one(m, "beta"),
                            bias=_one(m, "bias"), threshold=_one(m, "threshold"),
                            max_spikes=float(torch.as_tensor(m.max_spikes_per_dt).float()))
    return {"type": "rockpool_lif", "neuron": params.to_dict()}


def _linear(m) -> dict:
    return {"type": "linear", "in": int(m.size_in), "out": int(m.size_out),
            "bias": m.bias is not None}


CELLS = {"LIFTorch": _lif}
LAYERS = {"LinearTorch": _linear}
WEIGHTS = {"LinearTorch": {"weight": lambda w: w.t().contiguous()}}  # (in, out) -> (out, in)


def reset(module) -> None:
    """Every Rockpool module's state back to its initial value (reset_state). Rockpool's own
    `modules()` lists names: torch's walks the modules."""
    if not classes():
        return
    for m in torch.nn.Module.modules(module):
        if type(m).__module__.startswith("rockpool") and hasattr(m, "reset_state"):
            m.reset_state()


def step(m, x, state):
    raise NotImplementedError  # Rockpool modules run whole sequences (run_sequence)


def run_container(user, x, state):
    raise NotImplementedError


def runs_sequences(user) -> bool:
    return True


def run_sequence(user, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The user's module called once on (B, T, channels), as Rockpool runs it; -> (T, B, K)."""
    reset(user)
    y = user(torch.stack(inputs, 1).flatten(2))
    y = y[0] if isinstance(y, tuple) else y  # a Rockpool module returns (output, state, record)
    reset(user)
    return y.transpose(0, 1)

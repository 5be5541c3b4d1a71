"""SpikingJelly layers as edgeprune layer descriptions (the framework table for
importers/code.py).

IFNode, LIFNode and ParametricLIFNode become `charge_lif` (edgeprune.neuron_kinds.ChargeParams):
SpikingJelly's charge, its spike at v >= v_threshold, its hard (v_reset) or soft (None) reset,
decay_input, and PLIF's float32 sigmoid(w), in SpikingJelly's CPU operation order. The
surrogate and detach_reset shape only gradients: ignored. Its `layer.*` modules (Conv2d,
Linear, BatchNorm2d, AvgPool2d, Flatten, ...) are subclasses of the torch layers with a
step_mode: they are read as the torch layer they subclass (WRAPPERS), and SeqToANNContainer /
MultiStepContainer are flattened like nn.Sequential. The user's module is run in single-step
mode (functional.set_step_mode), one call per timestep, from functional.reset_net.
"""
from __future__ import annotations

import logging

from ..neuron_kinds import ChargeParams
from .module_values import one_number

NAME = "spikingjelly"
CELL_NAMES = ("IFNode", "LIFNode", "ParametricLIFNode")
CONTAINERS: tuple[str, ...] = ()
FLATTENED = ("SeqToANNContainer", "MultiStepContainer")
WRAPPERS = "spikingjelly.activation_based.layer"  # modules read as their torch base class


def classes() -> dict[str, type]:
    try:
        from spikingjelly.activation_based import layer, neuron
    except ImportError:
        return {}
    found = {n: getattr(neuron, n) for n in CELL_NAMES if hasattr(neuron, n)}
    found.update({n: getattr(layer, n) for n in FLATTENED if hasattr(layer, n)})
    return found


def version() -> str:
    import importlib.metadata

    return importlib.metadata.version("spikingjelly")


def _node(m, leak: str) -> dict:
    tau = q = None
    if leak == "tau":
        tau = float(m.tau)
    elif leak == "q":
        q = float(m.w.detach().float().sigmoid())
    params = ChargeParams(tau=tau, q=q, decay_input=bool(getattr(m, "decay_input", True)),
                          v_threshold=one_number(m, "v_threshold"), v_reset=one_number(m, "v_reset"))
    return {"type": "charge_lif", "neuron": params.to_dict()}


CELLS = {"IFNode": lambda m: _node(m, "none"), "LIFNode": lambda m: _node(m, "tau"),
         "ParametricLIFNode": lambda m: _node(m, "q")}


def reset(module) -> None:
    """Single-step mode and the initial state (functional.reset_net) before a run."""
    if not classes():
        return
    from spikingjelly.activation_based import functional

    if any(type(m).__module__.startswith("spikingjelly") for m in module.modules()):
        # its neurons' first call registers its kernels, and torch logs "Triton not available"
        # for each (on a machine without a GPU): noise above a one-line error, not a finding
        logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
        functional.set_step_mode(module, "s")
        functional.reset_net(module)


def step(m, x, state):
    """One timestep of a node: it keeps its own state (state stays None)."""
    return m(x), None


def run_container(user, x, state):
    raise NotImplementedError

"""Norse layers as edgeprune layer descriptions (the framework table for importers/code.py).

Norse cells: LIFBoxCell -> lif, LIFCell -> cuba_lif (the current-based LIF, Norse's default
neuron), LICell / LIBoxCell -> li. Norse keeps dt out of its parameters; each rate becomes the
float32 product dt·tau_*_inv that Norse's step computes, so the rebuilt neuron, run with
dt = 1, is bit-identical. A SequentialState is called with its state once per timestep, an
nn.Sequential stepped child by child with SequentialState's rule (cells get and return state).
"""
from __future__ import annotations

import torch

from ..config import NeuronParams
from ..errors import UserError
from ..neuron_kinds import CubaParams, LIParams

NAME = "norse"
CELL_NAMES = ("LIFBoxCell", "LIFCell", "LICell", "LIBoxCell")
CONTAINERS = ("SequentialState",)


def classes() -> dict[str, type]:
    """Norse's cell and container classes by name ({} when Norse is not installed)."""
    try:
        import norse.torch as norse
    except ImportError:
        return {}
    return {n: getattr(norse, n) for n in CELL_NAMES + CONTAINERS if hasattr(norse, n)}


def version() -> str:
    import norse

    return getattr(norse, "__version__", "?")


def _f(v) -> float:
    return float(torch.as_tensor(v).item())


def _no_leak(p) -> None:
    if _f(p.v_leak) != 0.0:
        raise UserError(f"it has v_leak {_f(p.v_leak)}; only 0 is supported")


def _reset_name(fn) -> str:
    from norse.torch.functional.reset import reset_subtract, reset_value

    for name, f in (("value", reset_value), ("subtract", reset_subtract)):
        if f is fn:
            return name
    raise UserError(f"reset method {getattr(fn, '__name__', fn)} has no equivalent here "
                    "(reset_value or reset_subtract)")


def _lif_box(m) -> dict:
    p = m.p
    _no_leak(p)
    # Norse multiplies dt * tau_mem_inv in the step; computing the product the same way keeps
    # the rebuilt neuron bit-identical with dt = 1.
    neuron = NeuronParams(tau_mem_inv=_f(m.dt * p.tau_mem_inv), v_th=_f(p.v_th),
                          v_reset=_f(p.v_reset), reset=_reset_name(p.reset_method),
                          surrogate=str(p.method), alpha=_f(p.alpha))
    return {"type": "lif", "neuron": neuron.to_dict()}


def _lif_cell(m) -> dict:
    p = m.p
    _no_leak(p)
    if str(p.method) == "adjoint":
        raise UserError("the adjoint method has no step function to rebuild")
    # -dt·tau_syn_inv (Norse's product) is the exact negation of dt·tau_syn_inv
    neuron = CubaParams(tau_mem_inv=_f(m.dt * p.tau_mem_inv), tau_syn_inv=_f(m.dt * p.tau_syn_inv),
                        v_th=_f(p.v_th), v_reset=_f(p.v_reset), reset="value",
                        surrogate=str(p.method), alpha=_f(p.alpha))
    return {"type": "cuba_lif", "neuron": neuron.to_dict()}


def _li(m, box: bool) -> dict:
    p = m.p
    _no_leak(p)
    dt = float(getattr(m, "dt", 1e-3))
    params = LIParams(_f(dt * p.tau_mem_inv), 1.0 if box else _f(dt * p.tau_syn_inv))
    return {"type": "li", **params.to_dict()}


# Norse cell name -> its description
CELLS = {"LIFBoxCell": _lif_box, "LIFCell": _lif_cell, "LICell": lambda m: _li(m, box=False),
         "LIBoxCell": lambda m: _li(m, box=True)}


def reset(module) -> None:
    """Norse cells keep no state between calls."""


def step(m, x, state):
    """One timestep of a Norse cell: (output, new state)."""
    return m(x, state)


def run_container(user, x, state):
    """A SequentialState is called with its state."""
    return user(x, state)


def user_steps(user, inputs):
    """Kept for callers of the Norse-only importer: see importers.code.user_steps."""
    from .code import user_steps as run

    return run(user, inputs)

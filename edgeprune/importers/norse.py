"""A Norse model written elsewhere (an nn.Sequential or Norse SequentialState of standard layers
and Norse cells) as an edgeprune layer list, and the user's module run the way Norse users run
it, for the parity proof.

Norse cells: LIFBoxCell -> lif, LICell / LIBoxCell -> li. LIFCell (a LIF with a synaptic
current) is refused: edgeprune's LIF has none. Nested plain nn.Sequential containers are
flattened. A network without a LIFBoxCell is refused: it would not be a spiking network.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import layers
from ..config import NeuronParams
from ..errors import UserError
from ..neurons import RESET_FUNCTIONS, LIParams


def norse_classes() -> dict[str, type]:
    import norse.torch as norse

    return {n: getattr(norse, n) for n in ("SequentialState", "LIFBoxCell", "LICell",
                                            "LIBoxCell", "LIFCell") if hasattr(norse, n)}


def leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(path, layer) in execution order; nested plain Sequential containers are flattened."""
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            out += leaves(child, path + ".")
        else:
            out.append((path, child))
    return out


def _f(v) -> float:
    return float(torch.as_tensor(v).item())


def _reset_name(fn) -> str:
    for name, f in RESET_FUNCTIONS.items():
        if f is fn:
            return name
    raise UserError(f"reset method {getattr(fn, '__name__', fn)} has no equivalent here "
                    "(reset_value or reset_subtract)")


def _lif_box(m) -> dict:
    p = m.p
    if _f(p.v_leak) != 0.0:
        raise UserError(f"it has v_leak {_f(p.v_leak)}; only 0 is supported")
    # Norse multiplies dt * tau_mem_inv in the step; computing the product the same way keeps
    # the rebuilt neuron bit-identical with dt = 1.
    neuron = NeuronParams(tau_mem_inv=_f(m.dt * p.tau_mem_inv), v_th=_f(p.v_th),
                          v_reset=_f(p.v_reset), reset=_reset_name(p.reset_method),
                          surrogate=str(p.method), alpha=_f(p.alpha))
    return {"type": "lif", "neuron": neuron.to_dict()}


def _li(m, box: bool) -> dict:
    p = m.p
    if _f(p.v_leak) != 0.0:
        raise UserError(f"it has v_leak {_f(p.v_leak)}; only 0 is supported")
    dt = float(getattr(m, "dt", 1e-3))
    params = LIParams(_f(dt * p.tau_mem_inv), 1.0 if box else _f(dt * p.tau_syn_inv))
    return {"type": "li", **params.to_dict()}


def _lif_cell(m) -> dict:
    raise UserError("it has a synaptic current, which edgeprune's LIF does not model; use "
                    "norse LIFBoxCell")


# Norse cell name -> its description
NORSE_CELLS = {"LIFBoxCell": _lif_box, "LICell": lambda m: _li(m, box=False),
               "LIBoxCell": lambda m: _li(m, box=True), "LIFCell": _lif_cell}


def describe(path: str, m: nn.Module) -> dict:
    """The layer-list entry of one user layer; UserError naming it if it is not supported."""
    norse = norse_classes()
    cell = next((name for name in NORSE_CELLS if type(m) is norse.get(name)), None)
    try:
        d = NORSE_CELLS[cell](m) if cell else layers.describe(m)
    except UserError as e:
        raise UserError(f"layer {path} ({type(m).__name__}) is not supported: {e}") from None
    if d is None:
        t = type(m)
        raise UserError(f"layer {path} ({t.__module__}.{t.__name__}) is not supported: use "
                        f"{layers.SUPPORTED} and Norse LIFBoxCell, LICell, LIBoxCell")
    return d


def convert(user: nn.Module) -> tuple[list[dict], list[str]]:
    """The layer list of the user's module and the user's path of each entry."""
    norse = norse_classes()
    if type(user) not in (nn.Sequential, norse.get("SequentialState")):
        raise UserError(f"the model is a {type(user).__module__}.{type(user).__name__}: only "
                        "nn.Sequential or norse SequentialState can be imported")
    found = leaves(user)
    described = [describe(p, m) for p, m in found]
    if not any(d["type"] == "lif" for d in described):
        raise UserError("the model has no spiking layer (norse LIFBoxCell): nothing to import "
                        "as an SNN")
    return described, [p for p, _ in found]


@torch.no_grad()
def user_steps(user: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The user's module run once per timestep with its state, as Norse users do. A
    SequentialState is called itself; an nn.Sequential (which cannot pass state) is stepped
    child by child with SequentialState's rule (cells get and return their state)."""
    norse = norse_classes()
    outs, state = [], None
    cells = tuple(c for n, c in norse.items() if n != "SequentialState")
    children = [m for _, m in leaves(user)]
    for x in inputs:
        try:
            if type(user) is norse.get("SequentialState"):
                y, state = user(x, state)
            else:
                state = state or [None] * len(children)
                y = x
                for i, m in enumerate(children):
                    if isinstance(m, cells):
                        y, state[i] = m(y, state[i])
                    else:
                        y = m(y)
        except Exception as e:
            raise UserError(f"running the user's model failed: {type(e).__name__}: {e}") from None
        outs.append(y)
    return torch.stack(outs)


@torch.no_grad()
def parity(user: nn.Module, ours, x: torch.Tensor, timesteps: int) -> float:
    """Max abs difference of per-step outputs (eval mode) on images x in [0, 1]. Direct: both see
    the normalized image every step; poisson: both see the same seeded input spikes."""
    from ..models import poisson_spikes

    user.eval()
    ours.eval()
    if ours.encoding == "direct":
        ref = user_steps(user, [ours.normalize(x)] * timesteps)
        got = ours(x, timesteps)
    else:
        spikes = poisson_spikes(x, timesteps, torch.Generator().manual_seed(0))
        ref = user_steps(user, list(spikes))
        got = ours.forward_spikes(spikes)
    if ref.shape != got.shape:
        raise UserError(f"the rebuilt model outputs {list(got.shape)} per run, the user's "
                        f"{list(ref.shape)}")
    return float((ref - got).abs().max())

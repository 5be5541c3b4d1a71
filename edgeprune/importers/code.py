"""A model written elsewhere in Python (an nn.Sequential, or Norse's SequentialState, of standard
layers and Norse or snnTorch neurons) as an edgeprune layer list, and the user's module run the
way its framework runs it, for the parity proof and the fidelity report.

Each framework is a table module (importers/norse.py, importers/snntorch.py): its neuron classes
by name and how to describe one (`CELLS`), its containers, and how to step a neuron one timestep
with its state. Adding a framework is adding its table to FRAMEWORKS. Nested plain nn.Sequential
containers are flattened. A network without a spiking neuron is refused.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import layers
from ..errors import UserError
from . import norse as norse_table
from . import snntorch as snntorch_table
from . import spikingjelly as spikingjelly_table

FRAMEWORKS = (norse_table, snntorch_table, spikingjelly_table)


def _cell_table(m: nn.Module):
    """(framework table, class name) of a neuron module, else (None, None)."""
    for fw in FRAMEWORKS:
        for name, cls in fw.classes().items():
            if name in fw.CELLS and type(m) is cls:
                return fw, name
    return None, None


def _container(user: nn.Module):
    for fw in FRAMEWORKS:
        for name in fw.CONTAINERS:
            if type(user) is fw.classes().get(name):
                return fw
    return None


def _flattened(m: nn.Module) -> bool:
    """A plain nn.Sequential, or a framework's sequential container (SpikingJelly's
    SeqToANNContainer): its children run in order."""
    return type(m) is nn.Sequential or any(
        type(m) is fw.classes().get(n) for fw in FRAMEWORKS for n in getattr(fw, "FLATTENED", ()))


def _as_base(m: nn.Module) -> dict | None:
    """A framework's wrapper of a torch layer (SpikingJelly's layer.Conv2d, a subclass of
    nn.Conv2d) read as the registered torch class it subclasses, else None."""
    if not any(type(m).__module__.startswith(w) for fw in FRAMEWORKS
               for w in (getattr(fw, "WRAPPERS", None),) if w):
        return None
    for base in type(m).__mro__[1:]:
        if base in layers.BY_MODULE:
            kind = layers.BY_MODULE[base]
            return {"type": kind.name, **kind.describe(m)}
    return None


def _torch_base(t: type) -> str:
    base = next((b for b in t.__mro__[1:] if b.__module__.startswith("torch.nn")), None)
    return f", a subclass of {base.__module__}.{base.__name__}" if base is not None else ""


def leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(path, layer) in execution order; nested plain Sequential containers are flattened."""
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if _flattened(child):
            out += leaves(child, path + ".")
        else:
            out.append((path, child))
    return out


def supported_neurons() -> str:
    return ", ".join(f"{fw.NAME} {n}" for fw in FRAMEWORKS for n in fw.CELLS)


def describe(path: str, m: nn.Module) -> dict:
    """The layer-list entry of one user layer; UserError naming it if it is not supported."""
    fw, cell = _cell_table(m)
    try:
        d = fw.CELLS[cell](m) if fw else (layers.describe(m) or _as_base(m))
    except UserError as e:
        raise UserError(f"layer {path} ({type(m).__name__}) is not supported: {e}") from None
    if d is None:
        t = type(m)
        raise UserError(f"layer {path} ({t.__module__}.{t.__name__}{_torch_base(t)}) is not "
                        f"supported: use {layers.SUPPORTED} and {supported_neurons()}")
    return d


def frameworks_of(user: nn.Module) -> list:
    """The framework tables whose neurons the module uses."""
    found = []
    for _, m in leaves(user):
        fw, _ = _cell_table(m)
        if fw is not None and fw not in found:
            found.append(fw)
    return found


def convert(user: nn.Module) -> tuple[list[dict], list[str]]:
    """The layer list of the user's module and the user's path of each entry."""
    if type(user) is not nn.Sequential and _container(user) is None:
        names = ", ".join(f"{fw.NAME} {c}" for fw in FRAMEWORKS for c in fw.CONTAINERS)
        raise UserError(f"the model is a {type(user).__module__}.{type(user).__name__}: only "
                        f"nn.Sequential or {names} can be imported")
    found = leaves(user)
    described = [describe(p, m) for p, m in found]
    if not any(layers.KINDS[d["type"]].neuron and d["type"] not in ("li", "integrator")
               for d in described):
        raise UserError("the model has no spiking layer (e.g. norse LIFBoxCell or LIFCell, "
                        "snntorch Leaky): nothing to import as an SNN")
    return described, [p for p, _ in found]


@torch.no_grad()
def user_steps(user: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The user's module run once per timestep with its state, as its framework runs it. A
    container that carries state (Norse SequentialState) is called itself; an nn.Sequential
    is stepped child by child: neurons get and return their state (snnTorch neurons with
    init_hidden keep it themselves), other layers are called."""
    container = _container(user)
    children = [m for _, m in leaves(user)]
    for fw in FRAMEWORKS:
        fw.reset(user)
    outs, state = [], None
    for x in inputs:
        try:
            if container is not None:
                y, state = container.run_container(user, x, state)
            else:
                state = state or [None] * len(children)
                y = x
                for i, m in enumerate(children):
                    fw, _ = _cell_table(m)
                    if fw is not None:
                        y, state[i] = fw.step(m, y, state[i])
                    else:
                        y = m(y)
        except Exception as e:
            raise UserError(f"running the user's model failed: {type(e).__name__}: {e}") from None
        outs.append(y)
    return torch.stack(outs)


@torch.no_grad()
def reference_run(user: nn.Module, ours, x: torch.Tensor, timesteps: int) -> tuple:
    """Per-step outputs (T, B, K) of the user's module and of ours (eval mode) on images x in
    [0, 1]. Direct: both see the normalized image every step; poisson: both see the same seeded
    input spikes."""
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
    return ref, got


def parity(user: nn.Module, ours, x: torch.Tensor, timesteps: int) -> float:
    """Max abs difference of per-step outputs (see reference_run)."""
    ref, got = reference_run(user, ours, x, timesteps)
    return float((ref - got).abs().max())

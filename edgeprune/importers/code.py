"""A model written elsewhere in Python (an nn.Sequential, or Norse's SequentialState, of standard
layers and Norse, snnTorch, SpikingJelly or Sinabs neurons; or a wrapper module whose only child
is one) as an edgeprune layer list, and the user's module run the way its framework runs it,
for the parity proof and the fidelity report.

Each framework is a table module (importers/norse.py, snntorch.py, spikingjelly.py, sinabs.py):
its neuron classes by name and how to describe one (`CELLS`), its containers, and how to step a
neuron one timestep with its state, or (Sinabs) how to run a whole sequence (`run_sequence`).
Adding a framework is adding its table to FRAMEWORKS. Nested plain nn.Sequential containers are
flattened. A network without a spiking neuron is refused.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import layers
from ..errors import UserError
from . import norse as norse_table
from . import rockpool as rockpool_table
from . import sinabs as sinabs_table
from . import snntorch as snntorch_table
from . import spikingjelly as spikingjelly_table

FRAMEWORKS = (norse_table, snntorch_table, spikingjelly_table, sinabs_table, rockpool_table)
INPUT_PATH = "(input)"  # the user path of layers a framework's run implies (Rockpool's flatten)


def _cell_table(m: nn.Module):
    """(framework table, class name) of a neuron module, else (None, None)."""
    for fw in FRAMEWORKS:
        for name, cls in fw.classes().items():
            if name in fw.CELLS and type(m) is cls:
                return fw, name
    return None, None


def _framework_layer(m: nn.Module) -> dict | None:
    """A framework's own non-neuron layer (Sinabs' SumPool2d: a table's LAYERS), else None."""
    for fw in FRAMEWORKS:
        for name, read in getattr(fw, "LAYERS", {}).items():
            if type(m) is fw.classes().get(name):
                return read(m)
    return None


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
        d = fw.CELLS[cell](m) if fw else (layers.describe(m) or _framework_layer(m)
                                           or _as_base(m))
    except UserError as e:
        raise UserError(f"layer {path} ({type(m).__name__}) is not supported: {e}") from None
    if d is None:
        t = type(m)
        raise UserError(f"layer {path} ({t.__module__}.{t.__name__}{_torch_base(t)}) is not "
                        f"supported: use {layers.SUPPORTED} and {supported_neurons()}")
    return d


def _importable(m: nn.Module) -> bool:
    return type(m) is nn.Sequential or _container(m) is not None


def body(user: nn.Module) -> tuple[nn.Module, str]:
    """The container whose children are the layers, and the prefix of their paths in the user's
    module: the module itself, or the one child of a wrapper class (`self.net = nn.Sequential
    (...)`, forward `return self.net(x)`) that has no parameters or buffers of its own."""
    if _importable(user):
        return user, ""
    children = list(user.named_children())
    own = [n for n, v in [*user._parameters.items(), *user._buffers.items()] if v is not None]
    if len(children) == 1 and _importable(children[0][1]) and not own:
        return children[0][1], children[0][0] + "."
    names = ", ".join(f"{fw.NAME} {c}" for fw in FRAMEWORKS for c in fw.CONTAINERS)
    found = ", ".join(f"{n} ({type(c).__name__})" for n, c in children[:4]) or "none"
    if len(children) > 4:
        found += ", ..."
    extra = f" and parameters/buffers of its own ({', '.join(own[:3])})" if own else ""
    raise UserError(f"the model is a {type(user).__module__}.{type(user).__name__} with "
                    f"{len(children)} child module(s): {found}{extra}; importable: an "
                    f"nn.Sequential or {names}, or a module whose only child is one (and that "
                    "has no parameters of its own)")


def frameworks_of(user: nn.Module) -> list:
    """The framework tables whose neurons the module uses."""
    found = []
    for _, m in leaves(*body(user)):
        fw, _ = _cell_table(m)
        if fw is not None and fw not in found:
            found.append(fw)
    return found


def convert(user: nn.Module) -> tuple[list[dict], list[str]]:
    """The layer list of the user's module and the user's path of each entry."""
    found = leaves(*body(user))
    described = [describe(p, m) for p, m in found]
    implied = [dict(d) for fw in frameworks_of(user) for d in getattr(fw, "INPUT_LAYERS", ())]
    if not any(layers.KINDS[d["type"]].neuron and d["type"] not in ("li", "integrator")
               for d in described):
        raise UserError("the model has no spiking layer (e.g. norse LIFBoxCell or LIFCell, "
                        "snntorch Leaky): nothing to import as an SNN")
    return implied + described, [INPUT_PATH] * len(implied) + [p for p, _ in found]


def user_state(user: nn.Module) -> dict:
    """The user's state_dict with each framework layer's tensors in torch's layout (Rockpool's
    LinearTorch keeps its weight (in, out): a table's WEIGHTS)."""
    sd = dict(user.state_dict())
    module, prefix = body(user)
    for path, m in leaves(module, prefix):
        for fw in FRAMEWORKS:
            for name, fix in getattr(fw, "WEIGHTS", {}).items():
                if type(m) is fw.classes().get(name):
                    for leaf, f in fix.items():
                        if f"{path}.{leaf}" in sd:
                            sd[f"{path}.{leaf}"] = f(sd[f"{path}.{leaf}"])
    return sd


def state_keys(user: nn.Module) -> set[str]:
    """state_dict keys that hold a neuron's recorded state, not weights (Sinabs' v_mem)."""
    return {k for fw in FRAMEWORKS for k in getattr(fw, "state_keys", lambda m: set())(user)}


def _sequence_runner(user: nn.Module):
    """The run_sequence of a framework that runs whole sequences in one call (Sinabs)."""
    fws = [fw for fw in frameworks_of(user) if hasattr(fw, "runs_sequences")
           and fw.runs_sequences(user)]
    if fws and len(frameworks_of(user)) > 1:
        raise UserError(f"the model mixes {fws[0].NAME}'s neurons with another framework's: "
                        "not supported")
    return fws[0].run_sequence if fws else None


def _stepped(user: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    module, _ = body(user)
    container = _container(module)
    children = [m for _, m in leaves(module)]
    outs, state = [], None
    for x in inputs:
        if container is not None:
            y, state = container.run_container(module, x, state)
        else:
            state = state or [None] * len(children)
            y = x
            for i, m in enumerate(children):
                fw, _ = _cell_table(m)
                if fw is not None:
                    y, state[i] = fw.step(m, y, state[i])
                else:
                    y = m(y)
        outs.append(y)
    return torch.stack(outs)


def _first_call(user: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The wrapper's own forward on the first step, from the initial state."""
    for fw in FRAMEWORKS:
        fw.reset(user)
    y = user(x)
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def user_steps(user: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The user's module run as its framework runs it, (T, B, K). Sinabs runs the whole
    sequence of Squeeze layers in one call of the user's module. Otherwise one step at a time: a container that
    carries state (Norse SequentialState) is called itself; an nn.Sequential is stepped child
    by child: neurons get and return their state (snnTorch neurons with init_hidden and
    SpikingJelly's keep it themselves), other layers are called. A wrapper's child is what is
    stepped; its own forward must give the same first step (else it does more than call it)."""
    try:
        run = _sequence_runner(user)
        if run is not None:
            return run(user, inputs)
        for fw in FRAMEWORKS:
            fw.reset(user)
        out = _stepped(user, inputs)
        if body(user)[0] is not user:
            first = _first_call(user, inputs[0])
            for fw in FRAMEWORKS:
                fw.reset(user)
            if first.shape != out[0].shape or not torch.equal(first, out[0]):
                raise UserError(f"the forward of {type(user).__name__} computes something "
                                f"other than its child {body(user)[1][:-1]!r}: only a wrapper "
                                "whose forward returns self.<child>(x) can be imported")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"running the user's model failed: {type(e).__name__}: {e}") from None
    return out


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

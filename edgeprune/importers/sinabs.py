"""Sinabs layers as edgeprune layer descriptions (the framework table for importers/code.py).

IAF, LIF and their Squeeze forms become `sinabs_lif` (edgeprune.neuron_kinds.SinabsParams):
Sinabs' `lif_forward_single` with its spike function (MultiSpike: the count, SingleSpike: 0/1),
its reset (MembraneSubtract by the threshold, MembraneReset to a value), norm_input, min_v_mem
and alpha_mem = exp(−1/tau_mem) computed as Sinabs computes it (float32 torch). A synaptic
current (tau_syn) has no exact edgeprune form: refused. SumPool2d (torch's LPPool2d with p = 1)
becomes the sum pool.

Sinabs runs a whole sequence in one call. The Squeeze forms take (batch·time, ...), batch-major:
the reference run calls the user's module that way (`run_sequence`). IAF / LIF take (batch,
time, ...), which the layers around them (Conv2d, Flatten) do not: they are stepped child by
child, each neuron called with one timestep, keeping its state in its buffers as Sinabs'
lif_forward does between steps. Either run starts from `sinabs.reset_states`; the weights' recorded state buffers (v_mem, i_syn: the state the last
training batch left) are not weights, and every run starts from zero (`state_keys`).
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..neuron_kinds import SinabsParams
from .module_values import one_number

NAME = "sinabs"
SQUEEZED = ("IAFSqueeze", "LIFSqueeze")
CELL_NAMES = ("IAF", "LIF") + SQUEEZED
REFUSED = ("IAFRecurrent", "LIFRecurrent", "ALIF", "ALIFRecurrent", "ExpLeak",
           "ExpLeakSqueeze")
CONTAINERS: tuple[str, ...] = ()
LAYER_NAMES = ("SumPool2d",)


def classes() -> dict[str, type]:
    try:
        import sinabs.layers as sl
    except ImportError:
        return {}
    return {n: getattr(sl, n) for n in CELL_NAMES + REFUSED + LAYER_NAMES if hasattr(sl, n)}


def version() -> str:
    import importlib.metadata

    return importlib.metadata.version("sinabs")


def _spike_fn(m) -> bool:
    """multi_spike: MultiSpike; SingleSpike is 0/1; anything else (MaxSpike, a custom
    function, none: the membrane as output) is refused."""
    from sinabs.activation import MultiSpike, SingleSpike

    if m.spike_fn is MultiSpike:
        return True
    if m.spike_fn is SingleSpike:
        return False
    raise UserError(f"spike_fn {getattr(m.spike_fn, '__name__', m.spike_fn)!r}: only "
                    "MultiSpike and SingleSpike are supported")


def _reset(m, threshold: float) -> tuple[str, float]:
    from sinabs.activation import MembraneReset, MembraneSubtract

    fn = m.reset_fn
    if type(fn) is MembraneSubtract:
        if fn.subtract_value is not None and float(fn.subtract_value) != threshold:
            raise UserError(f"MembraneSubtract(subtract_value={fn.subtract_value}) differs "
                            "from the threshold: only the threshold is subtracted here")
        return "subtract", 0.0
    if type(fn) is MembraneReset:
        return "value", float(torch.tensor(float(fn.reset_value), dtype=torch.float32))
    raise UserError(f"reset_fn {type(fn).__name__}: only MembraneSubtract and MembraneReset "
                    "are supported")


def _alpha(m) -> float:
    """Sinabs' alpha_mem_calculated, as the float32 value its forward multiplies by."""
    if m.train_alphas:
        return one_number(m, "alpha_mem")
    tau = m.tau_mem.detach().float()
    if tau.numel() != 1:
        raise UserError("its tau_mem is not one number (one time constant per layer only)")
    return float(torch.exp(-1.0 / tau))


def _neuron(m, iaf: bool) -> dict:
    if m.tau_syn_calculated is not None:
        raise UserError("a synaptic current (tau_syn) has no exact edgeprune form; only "
                        "tau_syn=None is supported")
    th = one_number(m, "spike_threshold")
    if th is None or not th > 0:
        raise UserError(f"spike_threshold {th}: a positive threshold is needed")
    reset, value = _reset(m, th)
    params = SinabsParams(alpha_mem=1.0 if iaf else _alpha(m), threshold=th,
                          norm_input=bool(m.norm_input) and not iaf,
                          multi_spike=_spike_fn(m), reset=reset, reset_value=value,
                          min_v=one_number(m, "min_v_mem"))
    return {"type": "sinabs_lif", "neuron": params.to_dict()}


def _refused(name: str):
    def refuse(m):
        raise UserError(f"Sinabs {name} has no exact edgeprune form (recurrent or adaptive "
                        "neurons are not supported; use IAF, LIF or their Squeeze forms)")
    return refuse


def _sum_pool(m) -> dict:
    """LPPool2d(p=1) computes the window's average times its area: the sum exactly where the
    area is a power of two, and for the small whole counts spikes sum to (3×3 included);
    elsewhere within rounding, which the import's parity check bounds."""
    if m.ceil_mode:
        raise UserError("SumPool2d with ceil_mode is not supported")
    pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]  # noqa: E731
    return {"type": "sumpool2d", "kernel": pair(m.kernel_size),
            "stride": pair(m.stride or m.kernel_size), "padding": [0, 0]}


CELLS = {"IAF": lambda m: _neuron(m, True), "IAFSqueeze": lambda m: _neuron(m, True),
         "LIF": lambda m: _neuron(m, False), "LIFSqueeze": lambda m: _neuron(m, False),
         **{n: _refused(n) for n in REFUSED}}
LAYERS = {"SumPool2d": _sum_pool}  # framework layers that are not neurons


def _sinabs_neurons(module) -> list:
    found = classes()
    cells = tuple(found[n] for n in CELL_NAMES if n in found)
    return [m for m in module.modules() if type(m) in cells]


def state_keys(module) -> set[str]:
    """The state_dict keys of the neurons' recorded states (not weights)."""
    if not classes():
        return set()
    from sinabs.layers import StatefulLayer

    # a StatefulLayer's buffers are its states (v_mem, i_syn, ...)
    return {f"{p}.{s}" if p else s for p, m in module.named_modules()
            if isinstance(m, StatefulLayer) for s, _ in m.named_buffers(recurse=False)}


def reset(module) -> None:
    """sinabs.reset_states before a run (zero membranes)."""
    if _sinabs_neurons(module):
        from sinabs import reset_states

        reset_states(module)


def step(m, x, state):
    """One timestep of an IAF / LIF (not Squeeze): Sinabs' (batch, time, ...) call with one
    step; the layer keeps its state in its buffers, as lif_forward does between steps."""
    return m(x[:, None])[:, 0], None


def run_container(user, x, state):
    raise NotImplementedError


def _squeezed(user) -> bool:
    kinds = {type(m).__name__ in SQUEEZED for m in _sinabs_neurons(user)}
    if len(kinds) > 1:
        raise UserError("the model mixes Sinabs' Squeeze layers with IAF/LIF: no single input "
                        "layout runs it")
    return kinds == {True}


def runs_sequences(user) -> bool:
    """Squeeze layers need the whole run in one call (run_sequence); IAF / LIF are stepped."""
    return _squeezed(user)


def run_sequence(user, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The user's module called once on the whole run, as Sinabs runs its Squeeze layers:
    (B·T, ...) batch-major, in chunks of their batch_size where one is fixed; -> (T, B, K)."""
    cells = _sinabs_neurons(user)
    T, B = len(inputs), len(inputs[0])
    for m in cells:
        if m.num_timesteps not in (-1, T):
            raise UserError(f"its {type(m).__name__} has num_timesteps {m.num_timesteps}, "
                            f"the import runs {T} timesteps (-T): give -T {m.num_timesteps}")
    chunk = max([m.batch_size for m in cells if m.batch_size > 0] or [B])
    x = torch.stack(inputs, 1)  # (B, T, ...)
    outs = []
    for i in range(0, B, chunk):
        part = x[i:i + chunk]
        n = len(part)
        if n < chunk:  # a fixed batch_size: pad the last chunk with zeros, drop their outputs
            part = torch.cat([part, part.new_zeros((chunk - n, *part.shape[1:]))])
        reset(user)
        y = user(part.flatten(0, 1))
        outs.append(y.reshape(chunk, T, *y.shape[1:])[:n])
    reset(user)
    return torch.cat(outs).transpose(0, 1)

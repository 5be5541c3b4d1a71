"""The box LIF's recurrence over T as one autograd node, for training speed.

Forward: `_forward_step` T times, Norse's arithmetic, so spikes are bit-identical to its step
function. Backward: backpropagation through time written out as `_backward_step` T times
backwards. For large layers the two steps run as compiled elementwise kernels (torch.compile:
one pass over memory instead of a dozen); small ones run the same functions eagerly. The stem's
output under direct encoding (one tensor fed at every step) is never copied over T.
"""
from __future__ import annotations

import warnings

import torch

from .config import NeuronParams


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


def _forward_step(x, v, spikes_out, decayed_out, a: float, th: float, r: float,
                  subtract: bool):
    """One LIF step on flat tensors, into the output buffers; returns the new potential.
    Norse's arithmetic, so spikes are bit-identical to its step function: vd = v + a·(x - v)
    (Norse adds v_leak = 0 first, which changes only the sign of a zero), z = vd > v_th (the
    same as vd - v_th > 0 in IEEE floats), and the reset as a select (Norse's
    (1 - z)·vd + z·r with z in {0, 1})."""
    vd = v + (x - v) * a
    fired = vd > th
    decayed_out.copy_(vd)
    spikes_out.copy_(fired)
    return torch.where(fired, vd - th, vd) if subtract else torch.where(fired, r, vd)


def _backward_step(gz, gv, vd, z, grad_out, a: float, th: float, r: float, subtract: bool,
                   surrogate: str, alpha: float, accumulate: bool, detach: bool):
    """One step of backpropagation through time; returns dL/dv for the step before. The reset
    depends on the spike (autograd differentiates Norse's reset the same way), unless
    `detach`: then the spike in the reset is a constant. `accumulate`: the input is the same
    at every step, so its gradient sums over the steps."""
    s = SURROGATE_GRADS[surrogate](vd - th, alpha)
    if detach:
        dv_dvd = 1.0 if subtract else 1 - z
    else:
        dv_dvd = 1 - th * s if subtract else (1 - z) + (r - vd) * s
    gvd = gz * s + gv * dv_dvd
    grad_out.copy_(grad_out + gvd * a if accumulate else gvd * a)
    return gvd * (1 - a)


# Above this many neurons per step the two steps run as compiled kernels (torch.compile: one
# pass over memory instead of a dozen); below, a compiled call costs more than it saves.
KERNEL_MIN_ELEMENTS = 1 << 18
_compiled: dict = {}


def _steps(n: int):
    """The (forward, backward) step functions for `n` neurons: compiled when it pays and a
    compiler is at hand (compiled once, for any size), else the same functions eagerly."""
    if n < KERNEL_MIN_ELEMENTS or _compiled.get("failed"):
        return _forward_step, _backward_step
    if "fwd" not in _compiled:
        _compiled["fwd"] = torch.compile(_forward_step, dynamic=True, fullgraph=True)
        _compiled["bwd"] = torch.compile(_backward_step, dynamic=True, fullgraph=True)
    return _compiled["fwd"], _compiled["bwd"]


def _run_step(kind: int, n: int, *args):
    """Call a step, falling back to eager for good if compiling fails (no C++ compiler)."""
    fn = _steps(n)[kind]
    try:
        return fn(*args)
    except Exception as e:
        if fn in (_forward_step, _backward_step):
            raise
        _compiled["failed"] = True
        warnings.warn(f"LIF kernels could not be compiled ({type(e).__name__}); training "
                      "continues with eager operations (slower, same results)")
        return (_forward_step, _backward_step)[kind](*args)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor in memory order: elementwise work ignores the layout, so a
    channels-last tensor needs no copy."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d]), reverse=True)
    return t.permute(order).reshape(-1)


def _buffer(like: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps, *like.shape) with each step laid out as `like` (dense)."""
    return torch.empty_strided((steps, *like.shape), (like.numel(), *like.stride()),
                               dtype=like.dtype, device=like.device)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


class _LIFSequence(torch.autograd.Function):
    """T steps of the LIF update in one autograd node: `_forward_step` T times, and BPTT
    written out as `_backward_step` T times backwards. `steps`: the input is one tensor fed at
    every one of `steps` timesteps (direct encoding), so no (T, ...) copy of it or of its
    gradient is ever made."""

    @staticmethod
    def forward(ctx, seq: torch.Tensor, p: NeuronParams, steps: int | None) -> torch.Tensor:
        first = seq if steps else seq[0]
        if not _dense(first):
            seq = seq.contiguous()
            first = seq if steps else seq[0]
        T, n = steps or seq.shape[0], first.numel()
        spikes, decayed = _buffer(first, T), _buffer(first, T)
        v = _flat(torch.zeros_like(first))
        subtract = p.reset == "subtract"
        for t in range(T):
            v = _run_step(0, n, _flat(seq if steps else seq[t]), v, _flat(spikes[t]),
                          _flat(decayed[t]), p.tau_mem_inv, p.v_th, p.v_reset, subtract)
        ctx.save_for_backward(spikes, decayed)
        ctx.p, ctx.static = p, bool(steps)
        return spikes

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor):
        spikes, decayed = ctx.saved_tensors
        p = ctx.p
        if grad_z.stride() != decayed.stride():  # match the saved layout element for element
            grad_z = _buffer(decayed[0], decayed.shape[0]).copy_(grad_z)
        T, n = decayed.shape[0], decayed[0].numel()
        grad_x = torch.zeros_like(decayed[0]) if ctx.static else _buffer(decayed[0], T)
        gv = torch.zeros(n, dtype=decayed.dtype, device=decayed.device)
        for t in range(T - 1, -1, -1):
            gv = _run_step(1, n, _flat(grad_z[t]), gv, _flat(decayed[t]), _flat(spikes[t]),
                           _flat(grad_x if ctx.static else grad_x[t]), p.tau_mem_inv, p.v_th,
                           p.v_reset, p.reset == "subtract", p.surrogate, p.alpha, ctx.static,
                           p.reset_grad == "detach")
        return grad_x, None, None


def lif_sequence(seq: torch.Tensor, p: NeuronParams) -> torch.Tensor:
    """Spikes (T, B, ...) of a LIF layer from a zero state, as one autograd node. A sequence
    that is one tensor expanded over T (direct encoding's stem output) is run from that tensor,
    so its gradient is summed over the steps in place instead of through a (T, ...) copy."""
    base = seq._base
    if seq.stride(0) == 0 and base is not None and base.shape == seq.shape[1:] and \
            base.requires_grad:
        return _LIFSequence.apply(base, p, seq.shape[0])
    return _LIFSequence.apply(seq, p, None)

"""How often each conv/linear weight is used per inference: the work a weight causes, which
`--scope cost` (edgeprune/criteria.py) divides a weight's score by.

A weight w[o, i, k] is used once for every (timestep, output position) at which the input it
reads (channel i, at tap k of that output's window) is non-zero: a spike, a non-zero pooled
average of spikes, or a pixel of the normalized image (analog, so nearly always): the
(weight, input) pairs NeuroBench's effective SynOps count (export/cost.py), attributed to each
weight. So a conv weight's uses are output positions x T x its input channel's activity,
counted exactly at the borders of a padded conv (a tap that falls on padding reads nothing).
Counted as what the model runs: under direct encoding the stem sees the image once, so its
weights are used once per inference, not T times.

The count is the gradient, with respect to an all-ones weight, of the layer's summed output
on the 0/1 map of non-zero inputs (d/dw[o,i,k] of the sum over outputs is the number of
non-zero inputs at that tap), which holds for every conv and linear layer, strided, padded or
grouped.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .models import PRUNABLE, prunable


def _uses(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    active = (x != 0).float()
    ones = torch.ones_like(layer.weight, dtype=torch.float32, requires_grad=True)
    with torch.enable_grad():
        y = F.linear(active, ones) if isinstance(layer, nn.Linear) else \
            layer._conv_forward(active, ones, None)
        (grad,) = torch.autograd.grad(y.double().sum(), ones)
    return grad.double()


@torch.no_grad()
def measure(model: nn.Module, x: torch.Tensor, timesteps: int) -> dict[str, torch.Tensor]:
    """{weight name (as `prunable` names it): uses per inference, float64 of the weight's
    shape}, averaged over the images `x` (B, C, H, W). A weight its layer never used on these
    images counts as used once in the batch (1/B): the measurement's resolution, so that a
    ranking dividing by it stays finite."""
    names = {id(p): n for n, p in prunable(model).items()}
    out = {n: torch.zeros(p.shape, dtype=torch.float64) for n, p in prunable(model).items()}
    hooks = []
    for m in model.modules():
        if isinstance(m, PRUNABLE):
            def hook(mod, inputs, _out, name=names[id(m.weight)]):
                out[name] += _uses(mod, inputs[0].detach().float()).cpu()
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng():  # Poisson encoding draws spikes: keep the count fixed
            torch.manual_seed(0)
            model(x, timesteps)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    batch = x.shape[0]
    return {n: (u / batch).clamp_min(1.0 / batch) for n, u in out.items()}

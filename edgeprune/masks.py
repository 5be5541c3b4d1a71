"""Pruning masks over the prunable weights (conv and linear), as {param name: bool tensor}.

Pure functions: a mask is computed from weights, applied to weights, and compared with another
mask; training keeps pruned weights at exactly zero by masking both weights and gradients.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import UserError
from .models import PRUNABLE, prunable

Masks = dict[str, torch.Tensor]


def dense(model: nn.Module) -> Masks:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model).items()}


def magnitude(weights: dict[str, torch.Tensor], sparsity: float, current: Masks | None = None,
              scope: str = "global", keep_dense: tuple[str, ...] = ()) -> Masks:
    """Keep the largest-magnitude weights so that `sparsity` of *all* prunable weights are zero
    (the layers in `keep_dense` stay whole, so the others take up their share); weights
    already pruned in `current` stay pruned. Ties break by position, so masks are deterministic."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    current = current or {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    names = [n for n in weights if n not in keep_dense]
    if not names:
        raise UserError("every prunable layer is kept dense: nothing to prune")
    n_target = int(round(sparsity * sum(w.numel() for w in weights.values())))
    prunable_total = sum(weights[n].numel() for n in names)
    if n_target > prunable_total:
        raise UserError(f"sparsity {sparsity} is out of reach with layers kept dense "
                        f"({n_target} weights to prune, {prunable_total} prunable)")
    out = {n: torch.ones_like(weights[n], dtype=torch.bool) for n in weights if n not in names}
    if scope in ("global", "lamp"):
        groups = [(names, n_target)]
    else:
        frac = n_target / prunable_total
        groups = [([n], int(round(frac * weights[n].numel()))) for n in names]
    score = lamp_scores if scope == "lamp" else (lambda w, _alive: w.detach().abs().float())
    for group, n_prune in groups:
        scores = torch.cat([score(weights[n], current[n]).flatten().cpu() for n in group])
        alive = torch.cat([current[n].flatten().cpu() for n in group])
        scores = torch.where(alive, scores, torch.full_like(scores, -1.0))  # pruned go first
        keep = torch.ones(scores.numel(), dtype=torch.bool)
        if n_prune > 0:
            keep[torch.sort(scores, stable=True).indices[:n_prune]] = False
        offset = 0
        for n in group:
            k = weights[n].numel()
            out[n] = keep[offset:offset + k].view_as(weights[n]).to(weights[n].device)
            offset += k
    dead = [n for n in names if not out[n].any()]
    if dead:
        raise UserError(f"sparsity {sparsity:.6g} would leave layer {dead[0]} with no weight at "
                        f"all; the largest sparsity that keeps every layer alive here is "
                        f"{_alive_limit(weights, current, names, scope):.6g}")
    return {n: out[n] for n in weights}


def lamp_scores(w: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al., ICLR 2021): a weight's square divided by the sum of the squares of the
    alive weights of its layer that are at least as large. Scale-free per layer (BatchNorm after
    a layer makes its weights' scale arbitrary), and each layer's largest weight scores 1, so a
    global ranking of these scores never empties a layer while weights remain for each."""
    sq = torch.where(alive, w.detach().float() ** 2, torch.zeros_like(w, dtype=torch.float32))
    flat = sq.flatten().cpu()
    order = torch.sort(flat, stable=True).indices
    tail = flat[order].flip(0).cumsum(0).flip(0)  # the sum of the squares from this one upwards
    out = torch.empty_like(flat)
    out[order] = flat[order] / tail.clamp_min(1e-30)
    return out.view_as(w)


def _alive_limit(weights: dict[str, torch.Tensor], current: Masks, names: list[str],
                 scope: str) -> float:
    """The largest sparsity at which magnitude pruning still keeps a weight in every layer."""
    total = sum(w.numel() for w in weights.values())
    if scope == "lamp":  # every layer's best weight scores 1: one weight per layer suffices
        return (total - len(names)) / total
    if scope != "global":  # every layer prunes the same fraction: the smallest layer dies first
        small = min(weights[n].numel() for n in names)
        prunable_total = sum(weights[n].numel() for n in names)
        return (small - 1) / small * prunable_total / total
    scored = [torch.where(current[n].cpu(), weights[n].detach().abs().float().cpu(),
                          torch.tensor(-1.0)) for n in names]
    scores = torch.cat([v.flatten() for v in scored])
    # a layer keeps a weight while every score above its best one is kept too
    needed = max(int((scores > v.max()).sum()) + 1 for v in scored)
    return (total - needed) / total


@torch.no_grad()
def disconnected(model: nn.Module, masks: Masks, input_shape) -> str | None:
    """The first layer that no input reaches through the kept weights (the network's output
    would not depend on its input), or None when a path exists. Runs a copy of the network with
    every kept weight set to 1, biases to 0, and BatchNorm, neurons and normalization as
    identities: on an all-ones input a unit is non-zero exactly when a path reaches it."""
    from .models import SNN, Normalize, is_stateful

    probe = copy.deepcopy(model).cpu().eval()
    for name, p in prunable(probe).items():
        p.copy_(masks[name].to(p.dtype).cpu() if name in masks else torch.ones_like(p))
    for parent in list(probe.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, Normalize)) or \
                    (is_stateful(child) and not isinstance(child, nn.Sequential)
                     and not hasattr(child, "folds")):
                setattr(parent, child_name, nn.Identity())
    for m in probe.modules():
        if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
            m.bias.zero_()
    silent: list[str] = []
    layers = {n: m for n, m in probe.named_modules() if isinstance(m, PRUNABLE)}
    hooks = [m.register_forward_hook(
        lambda m, i, o, n=n: silent.append(n) if not o.abs().sum() > 0 else None)
        for n, m in layers.items()]
    try:
        x = torch.ones((1, *input_shape))
        probe(x, 1) if isinstance(probe, SNN) else probe(x)
    finally:
        for h in hooks:
            h.remove()
    return f"{silent[0]}.weight" if silent else None


def sparsity(masks: Masks, names: list[str] | None = None) -> float:
    names = list(masks) if names is None else names
    total = sum(masks[n].numel() for n in names)
    kept = sum(int(masks[n].sum()) for n in names)
    return 1.0 - kept / total if total else 0.0


def per_layer(masks: Masks) -> dict[str, dict]:
    return {n: {"weights": m.numel(), "kept": int(m.sum()), "sparsity": 1.0 - float(m.float().mean())}
            for n, m in masks.items()}


def hamming(a: Masks, b: Masks) -> float:
    """Normalized Hamming distance: the fraction of prunable weights whose mask bit differs."""
    diff = sum(int((a[n] != b[n]).sum()) for n in a)
    return diff / sum(m.numel() for m in a.values())


def random_like(masks: Masks, generator: torch.Generator) -> Masks:
    """A random mask with the same number of kept weights in every layer."""
    out = {}
    for n, m in masks.items():
        k = int(m.sum())
        keep = torch.zeros(m.numel(), dtype=torch.bool)
        keep[torch.randperm(m.numel(), generator=generator)[:k]] = True
        out[n] = keep.view_as(m).to(m.device)
    return out


@torch.no_grad()
def apply(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    params = prunable(model)
    for n, m in masks.items():
        params[n].mul_(m.to(params[n].device, params[n].dtype))


def mask_grads(model: nn.Module, masks: Masks) -> None:
    params = prunable(model)
    for n, m in masks.items():
        if params[n].grad is not None:
            params[n].grad.mul_(m.to(params[n].grad.device, params[n].grad.dtype))


def of_model(model: nn.Module) -> Masks:
    """The mask a sparse model carries implicitly: its nonzero weights."""
    return {n: p.detach() != 0 for n, p in prunable(model).items()}

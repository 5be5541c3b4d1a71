"""Pruning masks over the prunable weights (conv and linear), as {param name: bool tensor}.

Pure functions: a mask is computed from weights, applied to weights, and compared with another
mask; training keeps pruned weights at exactly zero by masking both weights and gradients.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .criteria import CRITERIA
from .errors import UserError
from .models import PRUNABLE, prunable

Masks = dict[str, torch.Tensor]


def dense(model: nn.Module) -> Masks:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model).items()}


def prune(weights: dict[str, torch.Tensor], sparsity: float, criterion: str,
          current: Masks | None = None, keep_dense: tuple[str, ...] = (),
          stats: dict | None = None) -> Masks:
    """Keep the weights `criterion` (edgeprune.criteria) scores highest so that `sparsity` of
    *all* prunable weights are zero (the layers in `keep_dense` stay whole, so the others take
    up their share); weights already pruned in `current` go first. Ties break by position, so
    masks are deterministic. A layer left with no weight is an error naming the largest
    sparsity that keeps every layer alive under the same criterion."""
    rank = _Ranking(weights, sparsity, criterion, current, keep_dense, stats)
    n_target = rank.n_target(sparsity)
    out = {n: torch.ones_like(weights[n], dtype=torch.bool) for n in weights if n not in rank.names}
    for group, n_prune in rank.targets(n_target):
        keep = torch.ones(rank.scores[group].numel(), dtype=torch.bool)
        if n_prune > 0:
            keep[rank.order[group][:n_prune]] = False
        offset = 0
        for n in group:
            k = weights[n].numel()
            out[n] = keep[offset:offset + k].view_as(weights[n]).to(weights[n].device)
            offset += k
    dead = [n for n in rank.names if not out[n].any()]
    if dead:
        raise UserError(f"sparsity {sparsity:.6g} would leave layer {dead[0]} with no weight at "
                        f"all; the largest sparsity that keeps every layer alive here is "
                        f"{rank.alive_limit():.6g}")
    return {n: out[n] for n in weights}


def alive_limit(weights: dict[str, torch.Tensor], criterion: str, current: Masks | None = None,
                keep_dense: tuple[str, ...] = (), stats: dict | None = None) -> float:
    """The largest sparsity at which `prune` with `criterion` still keeps a weight in every
    layer (exact: one weight more pruned, and some layer has none)."""
    return _Ranking(weights, 0.0, criterion, current, keep_dense, stats).alive_limit()


class _Ranking:
    """A criterion's scores over the prunable layers, grouped as it ranks them (all layers
    together, or each alone), and each group's pruning order: what `prune` cuts and what the
    guards' limit is computed from, so the two cannot disagree."""

    def __init__(self, weights, sparsity, criterion, current, keep_dense, stats):
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
        if criterion not in CRITERIA:
            raise UserError(f"unknown ranking {criterion!r}: choose {', '.join(CRITERIA)}")
        crit = CRITERIA[criterion]
        current = current or {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        self.names = [n for n in weights if n not in keep_dense]
        if not self.names:
            raise UserError("every prunable layer is kept dense: nothing to prune")
        self.total = sum(w.numel() for w in weights.values())
        self.sizes = {n: weights[n].numel() for n in self.names}
        self.prunable = sum(self.sizes.values())
        scored = crit.score({n: weights[n] for n in self.names},
                            {n: current[n] for n in self.names}, stats)
        self.per_layer = crit.per_layer
        self.groups = [(n,) for n in self.names] if crit.per_layer else [tuple(self.names)]
        self.scores, self.order = {}, {}
        for group in self.groups:
            scores = torch.cat([scored[n].flatten().cpu() for n in group])
            alive = torch.cat([current[n].flatten().cpu() for n in group])
            scores = torch.where(alive, scores, torch.full_like(scores, -1.0))  # pruned go first
            self.scores[group] = scores
            self.order[group] = torch.sort(scores, stable=True).indices

    def n_target(self, sparsity: float) -> int:
        n = int(round(sparsity * self.total))
        if n > self.prunable:
            raise UserError(f"sparsity {sparsity} is out of reach with layers kept dense "
                            f"({n} weights to prune, {self.prunable} prunable)")
        return n

    def targets(self, n_target: int) -> list[tuple[tuple[str, ...], int]]:
        """(group, weights it prunes) for `n_target` pruned in all: a global group takes them
        all, per-layer groups the same fraction each."""
        if not self.per_layer:
            return [(self.groups[0], n_target)]
        frac = n_target / self.prunable
        return [(g, int(round(frac * self.sizes[g[0]]))) for g in self.groups]

    def alive_limit(self) -> float:
        # a layer keeps a weight while its last weight in its group's pruning order is kept
        last = {}
        for group in self.groups:
            position = torch.empty_like(self.order[group])
            position[self.order[group]] = torch.arange(len(position))
            offset = 0
            for n in group:
                last[n] = int(position[offset:offset + self.sizes[n]].max())
                offset += self.sizes[n]

        def alive(n_target: int) -> bool:
            return all(n_prune <= last[n] for g, n_prune in self.targets(n_target) for n in g)

        lo, hi = 0, self.prunable  # alive(0); the largest alive n_target, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if alive(mid) else (lo, mid - 1)
        return lo / self.total


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

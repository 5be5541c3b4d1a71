"""Pruning criteria: how a search ranks the weights it may prune. One registry entry each.

A criterion's `score(weights, alive, stats=None)` takes the prunable layers' weights and their
alive masks ({layer: tensor}) and returns a score per weight ({layer: float tensor of the
weight's shape}): the lowest scores are pruned first. `stats` is reserved for data-driven
rankings (per-layer measurements such as how often a weight's input spikes); the weight-only
criteria ignore it; a criterion that reads it says so (`uses`: stats are {layer: each
weight's work, its uses per inference (edgeprune/weight_uses.py) to the power
--cost-exponent}). `per_layer` criteria rank inside each layer, so every layer loses the same
fraction; the others rank all layers together. Every caller (the search methods, Early-Bird's
masks, the pre-search guards) ranks through `edgeprune.masks.prune` with the configured name,
so a guard judges with the ranking the search will use.

Torch-free at import (the scores use only the given tensors' own methods): the config schema,
which targets/ reads on a device without PyTorch, takes its choices from `NAMES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from torch import Tensor

Scores = Callable[["dict[str, Tensor]", "dict[str, Tensor]", "dict | None"], "dict[str, Tensor]"]


@dataclass(frozen=True)
class Criterion:
    name: str
    help: str  # what --scope NAME means, for --help
    score: Scores
    per_layer: bool = False  # rank inside each layer (each prunes the same fraction)
    uses: bool = False  # reads stats: each weight's uses per inference, measured on data


def magnitude(weights: dict, alive: dict, stats: dict | None = None) -> dict:
    return {n: w.detach().abs().float() for n, w in weights.items()}


def lamp(weights: dict, alive: dict, stats: dict | None = None) -> dict:
    return {n: lamp_layer(w, alive[n]) for n, w in weights.items()}


def lamp_layer(w: Tensor, alive: Tensor) -> Tensor:
    """LAMP (Lee et al., ICLR 2021): a weight's square divided by the sum of the squares of the
    alive weights of its layer that are at least as large. Scale-free per layer (BatchNorm after
    a layer makes its weights' scale arbitrary), and each layer's largest weight scores 1, so a
    global ranking of these scores never empties a layer while weights remain for each."""
    sq = (w.detach().float() ** 2).masked_fill(~alive.to(w.device), 0.0)
    flat = sq.flatten().cpu()
    order = flat.sort(stable=True).indices
    tail = flat[order].flip(0).cumsum(0).flip(0)  # the sum of the squares from this one upwards
    out = flat.clone()
    out[order] = flat[order] / tail.clamp_min(1e-30)
    return out.view_as(w)


def cost(weights: dict, alive: dict, stats: dict | None = None) -> dict:
    """LAMP per unit of work: a weight's LAMP score divided by its work, how often it is used
    per inference (output positions x T x its input's activity) to the power --cost-exponent,
    so the sparsity goes where the work is: a stem weight used at every pixel must be worth
    more than a classifier weight fed by a sparse spike train to be kept."""
    if stats is None:
        raise ValueError("the cost ranking needs each weight's uses (edgeprune.weight_uses)")
    return {n: s / stats[n].to(s.device, s.dtype) for n, s in lamp(weights, alive).items()}


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("lamp", "magnitudes normalized per layer, ranked globally; Lee et al. 2021", lamp),
    Criterion("global", "plain magnitude, the paper's", magnitude),
    Criterion("layer", "magnitude inside each layer: every layer pruned alike", magnitude,
              per_layer=True),
    Criterion("cost", "LAMP divided by each weight's uses per inference (output positions x T "
              "x its input's spike rate, measured on training images) to the power "
              "--cost-exponent: prunes where the work is", cost, uses=True),
)}
NAMES = tuple(CRITERIA)


def help_text() -> str:
    return "Ranking: " + "; ".join(f"{c.name} ({c.help})" for c in CRITERIA.values()) + "."

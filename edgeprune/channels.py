"""Channel granularity (`--granularity channel`): tickets that remove whole output channels of
a conv and whole neurons of a linear layer, as Early-Bird's channel tickets (You et al., 2020,
after network slimming), so that exact compaction (export/compact.py) shrinks the layers that
ONNX Runtime and the C runtime run.

A unit is an output channel (neuron) of a conv/linear layer that feeds another one; the image
channels and the classifier's outputs are the model's interface and stay. Removing a unit
zeroes its incoming weights and the next layer's weights that read it, so the mask is an
ordinary weight mask and `sparsity` keeps its meaning: the fraction of all conv/linear weights
that are zero. Whole units reach a target only in steps: the ticket is the prefix of the
units' pruning order whose removed weights are nearest the target (the achieved value is what
the search reports), and a target whose nearest prefix would remove a layer's last unit is
refused, naming the largest sparsity that keeps a unit in every layer.

A unit's magnitude is the |gamma| of the BatchNorm right after its layer (Early-Bird's
channel score), or the L1 norm of its incoming weights where no BatchNorm follows. The
configured criterion (edgeprune/criteria.py) then ranks the units as it ranks weights: LAMP
across the layers' unit magnitudes, plain magnitude, or per layer; `cost` divides by the work
a unit causes (the uses of its incoming weights and of the next layer's weights reading it).

Only plain chains are structured this way: conv/linear layers with BatchNorm and per-channel
layers (neurons, pooling, flatten) between them; a residual block or a grouped conv is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .criteria import CRITERIA
from .errors import UserError

PRODUCERS = (nn.Conv2d, nn.Linear)
PER_CHANNEL = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity,
               nn.Dropout)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def per_channel(m: nn.Module) -> bool:
    """A layer that acts on each channel alone: pooling, flatten, and every neuron kind (their
    parameters are one value per layer, so removing a unit leaves the others unchanged)."""
    return isinstance(m, PER_CHANNEL) or getattr(m, "elementwise", False)


@dataclass(frozen=True)
class UnitLayer:
    """A conv/linear layer whose outputs feed the next one (`consumer`)."""

    weight: str  # its weight's name (as models.prunable names it)
    consumer: str  # the next conv/linear layer's weight
    group: int  # consumer input features per unit: 1 for a conv, H*W after a flatten
    gamma: str | None  # the state-dict key of the BatchNorm weight right after it, if any


def chain(model: nn.Module) -> list[UnitLayer]:
    """The unit layers of `model` (an SNN: stem then body), in order; one line naming the
    layer when the network is not a plain chain."""
    layers = [(f"{part}.{name}", m) for part in ("stem", "body")
              for name, m in getattr(model, part).named_children()]
    producers, gammas = [], {}
    for k, (name, m) in enumerate(layers):
        if isinstance(m, PRODUCERS):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise UserError(f"--granularity channel: layer {name} is a grouped convolution")
            producers.append((name, m))
        elif isinstance(m, NORMS):  # per channel too; right after a layer, its gamma scores
            if k and isinstance(layers[k - 1][1], PRODUCERS):
                gammas[layers[k - 1][0]] = f"{name}.weight"
        elif not per_channel(m):
            raise UserError(f"--granularity channel needs a chain of conv/linear layers with "
                            f"per-channel layers between them; layer {name} "
                            f"({type(m).__name__}) is not one")
    out = []
    for (name, m), (cname, c) in zip(producers, producers[1:]):
        units = m.weight.shape[0]
        n_in = c.weight.shape[1]
        if n_in % units:
            raise UserError(f"--granularity channel: layer {cname} does not read whole "
                            f"channels of {name}")
        if isinstance(c, nn.Conv2d) and n_in != units:
            raise UserError(f"--granularity channel: layer {cname} does not read {name}")
        out.append(UnitLayer(f"{name}.weight", f"{cname}.weight", n_in // units,
                             gammas.get(name)))
    if not out:
        raise UserError("--granularity channel: the model has no conv/linear layer feeding "
                        "another")
    return out


def unit_mask(mask: torch.Tensor) -> torch.Tensor:
    """Which output units of a layer's weight mask keep a weight."""
    return mask.reshape(mask.shape[0], -1).any(1)


class _Order:
    """Every prunable unit in pruning order and the weights each prefix of it removes."""

    def __init__(self, state, chain_, criterion, current, keep_dense, stats):
        if criterion not in CRITERIA:
            raise UserError(f"unknown ranking {criterion!r}: choose {', '.join(CRITERIA)}")
        crit = CRITERIA[criterion]
        self.weights = {n: state[n] for n in _all_weights(chain_)}
        self.total = sum(w.numel() for w in self.weights.values())
        self.layers = [u for u in chain_ if u.weight not in keep_dense
                       and u.consumer not in keep_dense]
        if not self.layers:
            raise UserError("--granularity channel: every layer with channels to remove is "
                            "kept dense (or feeds one that is)")
        current = current or {}
        mags, alive, ustats = {}, {}, {}
        for u in self.layers:
            w = self.weights[u.weight].detach().float().cpu()
            live = unit_mask(current[u.weight].cpu()) if u.weight in current \
                else torch.ones(w.shape[0], dtype=torch.bool)
            mags[u.weight] = state[u.gamma].detach().float().abs().cpu() if u.gamma \
                else w.reshape(w.shape[0], -1).abs().sum(1)
            alive[u.weight] = live
            if stats is not None:  # the work a unit causes: its row and the columns reading it
                row = stats[u.weight].reshape(w.shape[0], -1).sum(1)
                cons = stats[u.consumer].float()
                cols = cons.reshape(cons.shape[0], w.shape[0], -1).sum((0, 2))
                ustats[u.weight] = (row + cols).float()
        scored = crit.score(mags, alive, ustats if crit.uses else None)
        keys, layer_of = [], []
        for k, u in enumerate(self.layers):
            s = scored[u.weight].float().cpu()
            if crit.per_layer:  # each layer alike: rank by the unit's place inside its layer
                s = torch.argsort(torch.argsort(s, stable=True)).float() / len(s)
            keys.append(torch.where(alive[u.weight], s, torch.full_like(s, -1.0)))
            layer_of += [(k, i) for i in range(len(s))]
        order = torch.sort(torch.cat(keys), stable=True).indices.tolist()
        self.units = [layer_of[i] for i in order]
        self._walk()

    def _walk(self):
        """removed[j]: weights zero after the first j units of the order are removed; last:
        the largest j that leaves every layer a unit."""
        shapes = {n: w.shape for n, w in self.weights.items()}
        kept_out = {n: s[0] for n, s in shapes.items()}
        reads = {u.consumer: u for u in self.layers}  # consumer -> the unit layer it reads
        taps = {n: w[0, 0].numel() for n, w in self.weights.items()}  # kernel positions

        def kept_in(n):  # input features of layer n still read
            u = reads.get(n)
            return shapes[n][1] if u is None else kept_out[u.weight] * u.group

        self.removed, self.last, done = [0], None, False
        for k, _i in self.units:
            u = self.layers[k]
            if kept_out[u.weight] == 1 and not done:
                self.last, done = len(self.removed) - 1, True
            delta = kept_in(u.weight) * taps[u.weight] + \
                kept_out[u.consumer] * u.group * taps[u.consumer]
            kept_out[u.weight] -= 1
            self.removed.append(self.removed[-1] + delta)
        if self.last is None:
            self.last = len(self.removed) - 1

    def prefix(self, sparsity: float) -> int:
        """The number of units whose removal lands nearest `sparsity` of all weights."""
        n = sparsity * self.total
        j = next((j for j, r in enumerate(self.removed) if r >= n), len(self.removed) - 1)
        if j > 0 and n - self.removed[j - 1] <= self.removed[j] - n:
            j -= 1
        return j

    def limit(self) -> float:
        return self.removed[self.last] / self.total


def _all_weights(chain_: list[UnitLayer]) -> list[str]:
    return [u.weight for u in chain_] + [chain_[-1].consumer]


def prune(state: dict[str, torch.Tensor], sparsity: float, criterion: str,
          chain_: list[UnitLayer], current: dict | None = None,
          keep_dense: tuple[str, ...] = (), stats: dict | None = None) -> dict:
    """The channel mask ({weight name: bool tensor}) nearest `sparsity`, ranked by `criterion`
    over the units; units already removed in `current` go first."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
    order = _Order(state, chain_, criterion, current, keep_dense, stats)
    j = order.prefix(sparsity)
    if j > order.last:
        raise UserError(f"sparsity {sparsity:.6g} would leave a layer with no channel; the "
                        f"largest sparsity whole channels reach with a channel kept in every "
                        f"layer is {order.limit():.6g}")
    return from_units(order.weights, chain_, _removed(order, j))


def alive_limit(state: dict[str, torch.Tensor], criterion: str, chain_: list[UnitLayer],
                current: dict | None = None, keep_dense: tuple[str, ...] = (),
                stats: dict | None = None) -> float:
    """The sparsity of the largest prefix of the pruning order that keeps a unit in every
    layer: `prune` at it succeeds, at one unit more it is refused."""
    return _Order(state, chain_, criterion, current, keep_dense, stats).limit()


def _removed(order: _Order, j: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {u.weight: [] for u in order.layers}
    for k, i in order.units[:j]:
        out[order.layers[k].weight].append(i)
    return out


def from_units(weights: dict, chain_: list[UnitLayer], removed: dict[str, list[int]]) -> dict:
    """The weight mask that removes the given units (by layer) and the weights reading them."""
    mask = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for u in chain_:
        gone = removed.get(u.weight, [])
        if not gone:
            continue
        mask[u.weight][gone] = False
        cols = torch.tensor([c for i in gone for c in range(i * u.group, (i + 1) * u.group)])
        mask[u.consumer][:, cols] = False
    return mask


def random_like(mask: dict, chain_: list[UnitLayer], generator: torch.Generator) -> dict:
    """A random channel mask that keeps as many units in every layer as `mask` does."""
    removed = {}
    for u in chain_:
        units = mask[u.weight].shape[0]
        n_gone = units - int(unit_mask(mask[u.weight]).sum())
        removed[u.weight] = sorted(torch.randperm(units, generator=generator)[:n_gone].tolist())
    out = from_units(mask, chain_, removed)
    return {n: m.to(mask[n].device) for n, m in out.items()}

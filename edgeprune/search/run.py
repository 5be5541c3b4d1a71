"""One search's fixed inputs (`SearchRun`) and a method's result (`Found`): what the stage
hands a method, and what the method hands back."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from .. import channels, masks as masklib, weight_uses
from ..criteria import CRITERIA
from ..artifacts import Artifact, Job, Store
from ..config import RunConfig, SearchConfig
from ..data import Dataset
from ..stage_inputs import ModelInput
from ..models import prunable
from ..train_stage import Report
from ..training import Trainer

GIVEN = "given"  # the rewind point of a model with no recorded early weights: its own weights


@dataclass
class SearchRun:
    """One search's fixed inputs, shared by the steps that run it."""

    store: Store
    dense: ModelInput
    ds: Dataset
    data_id: dict
    cfg: SearchConfig
    run: RunConfig  # the seed, the device and how to train
    report: Report
    # the dense run's epoch a ticket restarts from; "given": the model's own (pre-trained)
    # weights, for a model with no recorded early weights
    rewind_epoch: int | str
    keep_dense: tuple[str, ...]  # layers kept whole
    trunk: Artifact | None = None  # the imp ticket a branch method starts from
    timesteps: int = 0  # T the search trains at (T' for Early-Time)
    job: Job | None = None

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def device(self) -> str:
        return self.run.device

    def prune(self, state: dict[str, torch.Tensor], sparsity: float,
              current: masklib.Masks | None = None) -> masklib.Masks:
        """A mask at `sparsity` for the network with weights `state` (a full state dict),
        ranked by the configured criterion (--scope) at the configured granularity: every mask
        a method or guard draws comes from here."""
        stats = self.work(state) if CRITERIA[self.cfg.scope].uses else None
        return GRANULARITIES[self.cfg.granularity].prune(self, state, sparsity, current, stats)

    def work(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the cost ranking divides by: each weight's uses to the power --cost-exponent."""
        return {n: u ** self.cfg.cost_exponent for n, u in self.uses(state).items()}

    def uses(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each weight's uses per inference (edgeprune/weight_uses.py) for the network with
        weights `state`, at the model's full T (the work of the deployed ticket), on a fixed
        seeded sample of USES_IMAGES training images."""
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(self.ds.y_train), generator=g)[:USES_IMAGES]
        model = self.model_from(state)
        return weight_uses.measure(model, self.ds.x_train[idx].to(self.device),
                                   self.dense.spec.timesteps)

    def random_like(self, mask: masklib.Masks, generator: torch.Generator) -> masklib.Masks:
        """A random mask with `mask`'s count of weights (channels) kept in every layer."""
        return GRANULARITIES[self.cfg.granularity].random(self, mask, generator)

    @cached_property
    def chain(self) -> list[channels.UnitLayer]:
        return channels.chain(self.dense.model)

    def rewind_weights(self) -> dict[str, torch.Tensor]:
        """The weights a ticket restarts from: the dense run's snapshot at the rewind epoch, the
        model's own weights ("given"), or a fresh initialization (epoch 0 of a model that kept
        no snapshots)."""
        if self.rewind_epoch == GIVEN:
            return {k: v.detach().clone() for k, v in self.dense.model.state_dict().items()}
        return self.dense.snapshot(self.rewind_epoch) or fresh_init(self.dense, self.seed)

    def model_from(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        model = self.dense.spec.build()
        model.load_state_dict(state)
        return model.to(self.device)

    def trainer(self, model, epochs: int, seed: int, masks=None) -> Trainer:
        return Trainer(model, self.ds, self.timesteps, self.cfg.train_config(epochs), seed,
                       self.run, masks)


USES_IMAGES = 256  # training images the cost ranking measures each weight's uses on


@dataclass(frozen=True)
class Granularity:
    """What a search prunes: single weights or whole channels (--granularity)."""

    prune: Callable  # (run, state, sparsity, current, stats) -> mask
    random: Callable  # (run, mask, generator) -> a random mask like it


def _weight_mask(run: SearchRun, state, sparsity, current, stats):
    w = {n: state[n] for n in prunable(run.dense.model)}
    return masklib.prune(w, sparsity, run.cfg.scope, current, run.keep_dense, stats)


def _channel_mask(run: SearchRun, state, sparsity, current, stats):
    mask = channels.prune(state, sparsity, run.cfg.scope, run.chain, current, run.keep_dense,
                          stats)
    return {n: m.to(state[n].device) for n, m in mask.items()}


GRANULARITIES: dict[str, Granularity] = {
    "weight": Granularity(_weight_mask, lambda run, m, g: masklib.random_like(m, g)),
    "channel": Granularity(_channel_mask, lambda run, m, g: channels.random_like(m, run.chain, g)),
}


@dataclass
class Found:
    """A method's result: the mask, the weights it restarts from, and what it cost."""

    mask: masklib.Masks
    rewind: dict[str, torch.Tensor]
    trained: dict[str, torch.Tensor] | None = None  # the weights the mask was drawn from
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in prunable(model).items()}


def fresh_init(dense: ModelInput, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {k: v.clone() for k, v in dense.spec.build().state_dict().items()}

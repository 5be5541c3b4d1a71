"""How each search method finds its mask: a registry from method name to a function of one
`SearchRun`. Early-Time is not a method of its own: it picks the timesteps a method searches at
(`et-imp` = Early-Time + imp). `random` and `reinit` are branches, as in OpenLTH: they take an
existing imp ticket (the trunk) and change one thing about it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import distributed, masks as masklib, tensorfile
from ..artifacts import Artifact, Job, Store
from ..config import RunConfig, SearchConfig, resolved
from ..data import Dataset
from ..inputs import ModelInput
from ..models import prunable
from ..resume import EpochCheckpoint, run_epochs
from ..retrain import load_mask
from ..train import Report
from ..trainer import Trainer, evaluate
from . import earlytime
from .earlybird import EarlyBird
from .imp import round_sparsities

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


# -- Early-Time: which T' to search at ---------------------------------------------------------

def candidates(cfg: SearchConfig, T: int) -> list[int]:
    return [t for t in (cfg.et_candidates or earlytime.default_candidates(T)) if t < T]


def early_time(run: SearchRun) -> dict:
    """Pick T' on the network after `et_epochs` epochs at full T: the dense run's snapshot when
    it kept one (no extra cost), else that many epochs trained from the rewind point."""
    cfg, T = run.cfg, run.dense.spec.timesteps
    t0 = time.perf_counter()
    snap = run.dense.snapshot(cfg.et_epochs)
    if snap is not None:
        model, source = run.model_from(snap), f"dense run, epoch {cfg.et_epochs}"
    else:
        model = run.model_from(run.rewind_weights())
        if cfg.et_epochs > 0:
            trainer = Trainer(model, run.ds, T, cfg.train_config(cfg.et_epochs), run.seed,
                              run.run)
            for _ in range(cfg.et_epochs):
                trainer.train_epoch(run.report)
        source = f"{cfg.et_epochs} epochs at T={T} from the rewind point"
    cands = candidates(cfg, T)
    g = torch.Generator().manual_seed(run.seed)
    idx = torch.randperm(len(run.ds.y_train), generator=g)[:cfg.et_batch]
    scores = earlytime.kl_scores(model, run.ds.x_train[idx].to(run.device), T, cands)
    norm = earlytime.normalize(scores)
    pick = earlytime.pick(norm, T, cfg.et_lambda)
    return distributed.broadcast(
        {"candidates": cands, "kl": scores, "normalized_kl": norm, "pick": pick,
         "lambda": cfg.et_lambda, "scored_on": source, "seconds": time.perf_counter() - t0})


# -- imp ---------------------------------------------------------------------------------------

def imp(run: SearchRun) -> Found:
    """Rounds 1..R-1 prune and retrain from the rewind point; the last mask (round R) comes from
    round R-1's weights and needs no training here: the retrain stage trains it. Each round is
    an artifact of its own, so an interrupted search redoes only the missing rounds."""
    cfg = run.cfg
    schedule = round_sparsities(cfg.sparsity, cfg.prune_rate)
    w, mask, prev = weights(run.dense.model), None, run.dense.id
    state = {k: v.detach().cpu() for k, v in run.dense.model.state_dict().items()}
    # The target is not part of a round's identity: searches to 89.9% and to 95.7% share their
    # first rounds (round r always sits at 1 - (1 - rate)^r).
    base = {"prune_rate": cfg.prune_rate, "scope": cfg.scope, "keep_dense": list(run.keep_dense),
            "train": resolved(cfg.train_config(cfg.round_epochs)), "timesteps": run.timesteps,
            "rewind_epoch": run.rewind_epoch, "data": run.data_id, **run.run.identity()}
    found = Found(mask={}, rewind=run.rewind_weights())
    for r, s in enumerate(schedule[:-1], start=1):
        config = {**base, "round": r, "sparsity": s}
        round_mask = distributed.broadcast(masklib.magnitude(w, s, mask, cfg.scope,
                                                             run.keep_dense))
        art, _ = run.store.run("round", config, [prev],
                               lambda job: _imp_round(run, job, found.rewind, round_mask, r,
                                                      len(schedule)), collective=True)
        state = tensorfile.load(art.file("weights.safetensors"))
        mask = load_mask(art)
        w = {n: state[n] for n in mask}
        found.seconds += art.metrics["seconds"]
        row = {"kind": "round", "round": r, "rounds": len(schedule), **art.metrics}
        found.log.append(row)
        run.report({"event": "round", **row})
        prev = art.id
    found.mask = distributed.broadcast(masklib.magnitude(w, schedule[-1], mask, cfg.scope,
                                                         run.keep_dense))
    found.trained = state  # for learning-rate rewinding (retrain --init trained)
    found.log.append({"kind": "final-mask", "round": len(schedule),
                      "sparsity": masklib.sparsity(found.mask)})
    found.metrics["rounds"] = len(schedule)
    return found


def _imp_round(run: SearchRun, job: Job, rewind, mask, r: int, rounds: int) -> dict:
    model = run.model_from(rewind)
    trainer = run.trainer(model, run.cfg.round_epochs, run.seed + r, mask)
    progress = run_epochs(trainer, run.cfg.round_epochs, EpochCheckpoint(job.partial), {},
                          lambda row, p: False,
                          lambda e: run.report({**e, "round": r, "rounds": rounds}))
    t0 = time.perf_counter()
    acc = evaluate(model, run.ds.x_test, run.ds.y_test, run.timesteps, run.device)["accuracy"]
    tensorfile.save(job.dir / "mask.safetensors", mask)
    tensorfile.save(job.dir / "weights.safetensors", model.state_dict())
    return {"sparsity": masklib.sparsity(mask), "test_acc": acc,
            "seconds": progress["elapsed"] + time.perf_counter() - t0,
            "epochs": run.cfg.round_epochs, "timesteps": run.timesteps}


# -- Early-Bird --------------------------------------------------------------------------------

def early_bird(run: SearchRun) -> Found:
    """Train from the rewind point, drawing a mask at the target sparsity at the start of each
    epoch, until the last q masks agree (or the epoch budget runs out)."""
    cfg = run.cfg
    rewind = run.rewind_weights()
    model = run.model_from(rewind)
    trainer = run.trainer(model, cfg.round_epochs, run.seed)
    eb = EarlyBird(cfg.eb_q, cfg.eb_tau)

    def draw(progress: dict) -> bool:
        mask = distributed.broadcast(masklib.magnitude(weights(model), cfg.sparsity,
                                                       scope=cfg.scope, keep_dense=run.keep_dense))
        eb.window.clear()
        eb.window.extend(progress["window"])
        dist = eb.push(mask)
        progress["window"] = list(eb.window)
        row = {"kind": "eb", "epoch": trainer.epoch, "distance": dist}
        progress["log"].append(row)
        run.report({"event": "eb", **row, "epochs": cfg.round_epochs})
        return eb.converged(dist)

    t0 = time.perf_counter()
    progress = {"window": [], "log": []}
    stopped = draw(progress)  # the mask before any training is the first in the window
    progress["elapsed"] = time.perf_counter() - t0
    if not stopped:
        progress = run_epochs(trainer, cfg.round_epochs, EpochCheckpoint(run.job.partial),
                              progress, lambda row, p: draw(p), run.report)
    last = progress["log"][-1]
    return Found(progress["window"][-1], rewind, log=progress["log"],
                 seconds=progress["elapsed"],
                 metrics={"eb_epoch": last["epoch"], "eb_converged": eb.converged(last["distance"]),
                          "eb_final_distance": last["distance"]})


# -- branches off an imp ticket -------------------------------------------------------------------

def random_branch(run: SearchRun) -> Found:
    """A random mask with the trunk ticket's number of weights in every layer, restarting from
    the same weights."""
    mask = distributed.broadcast(masklib.random_like(load_mask(run.trunk),
                                                     torch.Generator().manual_seed(run.seed)))
    return Found(mask, tensorfile.load(run.trunk.file("rewind.safetensors")))


def reinit_branch(run: SearchRun) -> Found:
    """The trunk ticket's mask with a fresh random initialization."""
    return Found(load_mask(run.trunk), fresh_init(run.dense, run.seed + 1))


METHODS: dict[str, Callable[[SearchRun], Found]] = {
    "imp": imp, "eb": early_bird, "random": random_branch, "reinit": reinit_branch}
BRANCHES = ("random", "reinit")  # methods that take a trunk ticket

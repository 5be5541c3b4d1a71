"""Iterative Magnitude Pruning (Frankle & Carbin; the paper's search): prune a fraction of the
remaining weights per round, retrain from the rewind point, repeat."""
from __future__ import annotations

import time
from pathlib import Path

from .. import distributed, masks as masklib, plots, tensorfile
from ..artifacts import Job
from ..config import resolved
from ..errors import UserError
from ..stage_inputs import load_mask
from ..epochs import EpochCheckpoint, run_epochs
from ..training import evaluate
from .run import Found, SearchRun


def round_sparsities(target: float, rate: float) -> list[float]:
    """Sparsity after each round when every round prunes `rate` of the remaining weights; the
    last round lands exactly on `target` (it prunes less if a full round would overshoot)."""
    if not 0.0 < target < 1.0 or not 0.0 < rate < 1.0:
        raise UserError("sparsity and prune rate must be in (0, 1)")
    out, s = [], 0.0
    while True:
        s = 1.0 - (1.0 - s) * (1.0 - rate)
        if s >= target - 1e-9:
            out.append(target)
            return out
        out.append(s)


def find(run: SearchRun) -> Found:
    """Rounds 1..R-1 prune and retrain from the rewind point; the last mask (round R) comes from
    round R-1's weights and needs no training here: the retrain stage trains it. Each round is
    an artifact of its own, so an interrupted search redoes only the missing rounds."""
    cfg = run.cfg
    schedule = round_sparsities(cfg.sparsity, cfg.imp.prune_rate)
    mask, prev = None, run.dense.id
    state = {k: v.detach().cpu() for k, v in run.dense.model.state_dict().items()}
    # The target is not part of a round's identity: searches to 89.9% and to 95.7% share their
    # first rounds (round r always sits at 1 - (1 - rate)^r).
    base = {"prune_rate": cfg.imp.prune_rate, "scope": cfg.scope,
            **({"granularity": cfg.granularity} if cfg.granularity != "weight" else {}),
            **({"cost_exponent": cfg.cost_exponent} if cfg.scope == "cost" else {}),
            "keep_dense": list(run.keep_dense),
            "train": resolved(cfg.train_config(cfg.round_epochs)), "timesteps": run.timesteps,
            "rewind_epoch": run.rewind_epoch, "data": run.data_id, **run.run.identity()}
    found = Found(mask={}, rewind=run.rewind_weights())
    for r, s in enumerate(schedule[:-1], start=1):
        config = {**base, "round": r, "sparsity": s}
        round_mask = distributed.broadcast(run.prune(state, s, mask))
        art, _ = run.store.run("round", config, [prev],
                               lambda job: _round(run, job, found.rewind, round_mask, r,
                                                  len(schedule)), collective=True)
        state = tensorfile.load(art.file("weights.safetensors"))
        mask = load_mask(art)
        found.seconds += art.metrics["seconds"]
        row = {"kind": "round", "round": r, "rounds": len(schedule), **art.metrics}
        found.log.append(row)
        run.report({"event": "round", **row})
        prev = art.id
    found.mask = distributed.broadcast(run.prune(state, schedule[-1], mask))
    found.trained = state  # for learning-rate rewinding (retrain --init trained)
    found.log.append({"kind": "final-mask", "round": len(schedule),
                      "sparsity": masklib.sparsity(found.mask)})
    found.metrics["rounds"] = len(schedule)
    return found


def _round(run: SearchRun, job: Job, rewind, mask, r: int, rounds: int) -> dict:
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


def plot(log: list[dict], path: Path, cfg, title: str) -> None:
    plots.imp_rounds(log, path, title)

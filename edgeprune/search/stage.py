"""The search stage: from a dense model to a ticket (a mask plus the weights it starts from).

IMP rounds are artifacts of their own (`round-<id>`), so an interrupted search redoes only the
rounds that are missing. The dense model counts as round 0: its training is not search time.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import masks as masklib, plots, tensorfile
from ..artifacts import Artifact, Store, artifact_id
from ..data import Dataset
from ..errors import UserError
from ..models import prunable
from ..stages import DataConfig, ModelInput, Report, data_identity
from ..resume import EpochCheckpoint, run_epochs
from ..training import TrainConfig, Trainer, evaluate
from . import earlytime
from .config import SearchConfig
from .earlybird import EarlyBird
from .imp import round_sparsities


def search(store: Store, dense: ModelInput, data_cfg: DataConfig, ds: Dataset,
           cfg: SearchConfig, seed: int = 0, device: str = "cpu",
           report: Report = lambda e: None, ticket: Artifact | None = None
           ) -> tuple[Artifact, bool]:
    """Run (or find) a search; returns (search artifact, cached)."""
    if cfg.base == "reinit" and ticket is None:
        raise UserError("--method reinit needs the ticket whose mask it re-initializes: "
                        "pass --from-mask SEARCH_ARTIFACT")
    T = dense.spec.timesteps
    rewind_epoch = _rewind_epoch(dense, cfg)  # validated before any work or I/O
    data_id = data_identity(data_cfg, ds)
    # Defaults resolved into the id, so a changed default is a new artifact, not a stale hit.
    config = {"search": cfg.to_dict(), "seed": seed, "data": data_id,
              "rewind_epoch_resolved": rewind_epoch,
              "et_candidates_resolved": _candidates(cfg, T) if cfg.early_time else None}
    inputs = [dense.id] + ([ticket.id] if ticket else [])
    aid = artifact_id("search", config, inputs)
    found = store.find("search", aid)
    if found:
        return found, True
    store.writable()
    rewind = _rewind_weights(dense, rewind_epoch, seed)  # read only on a cache miss
    keep = _keep_dense(dense, cfg)
    masklib.magnitude(_weights(dense.model), cfg.sparsity, keep_dense=keep)  # reachable at all?
    seconds, t_search, et_info, log = 0.0, T, None, []

    if cfg.early_time:
        et_info = _early_time(dense, ds, cfg, rewind, seed, device, report)
        seconds += et_info["seconds"]
        t_search = et_info["pick"]
        log.append({"kind": "early-time", **et_info})
        report({"event": "early-time", **et_info})

    extra: dict = {}
    if cfg.base == "imp":
        mask, rounds_log, secs = _imp(store, dense, ds, cfg, rewind, t_search, keep, seed,
                                      device, report, data_id, rewind_epoch)
        log += rounds_log
        seconds += secs
        extra["rounds"] = len(round_sparsities(cfg.sparsity, cfg.prune_rate))
    elif cfg.base == "eb":
        mask, eb_log, secs, extra = _early_bird(store, aid, dense, ds, cfg, rewind, t_search,
                                                keep, seed, device, report)
        log += eb_log
        seconds += secs
    elif cfg.base == "random":
        template = (_load_mask(ticket) if ticket else
                    masklib.magnitude(_weights(dense.model), cfg.sparsity, scope="layer",
                                      keep_dense=keep))
        mask = masklib.random_like(template, torch.Generator().manual_seed(seed))
    else:  # reinit: the ticket's mask, a fresh initialization
        mask = _load_mask(ticket)
        rewind_epoch, rewind = "fresh-init", _fresh_init(dense, seed + 1)

    achieved = masklib.sparsity(mask)
    metrics = {"method": cfg.method, "target_sparsity": cfg.sparsity, "sparsity": achieved,
               "per_layer": masklib.per_layer(mask), "timesteps": T,
               "timesteps_search": t_search, "rewind_epoch": rewind_epoch,
               "search_seconds": seconds, "dense_test_accuracy": dense.test_accuracy,
               "early_time": et_info, **extra}
    report({"event": "search-done", **metrics})

    def write(tmp: Path) -> None:
        tensorfile.save(tmp / "mask.safetensors", mask)
        tensorfile.save(tmp / "rewind.safetensors", rewind)
        (tmp / "log.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in log))
        title = f"{cfg.method} on {data_cfg.name}"
        if cfg.base == "imp":
            plots.imp_rounds(log, tmp / "search.png", title)
        elif cfg.base == "eb":
            plots.eb_distances(log, tmp / "search.png", cfg.eb_tau, title)

    return store.write("search", aid, config=config, inputs=inputs, metrics=metrics,
                       write_files=write), False


# -- pieces ----------------------------------------------------------------------------------

def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in prunable(model).items()}


def _load_mask(art: Artifact) -> masklib.Masks:
    return {k: v.bool() for k, v in tensorfile.load(art.file("mask.safetensors")).items()}


def _fresh_init(dense: ModelInput, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {k: v.clone() for k, v in dense.spec.build().state_dict().items()}


def _rewind_epoch(dense: ModelInput, cfg: SearchConfig) -> int:
    """Which of the dense run's epochs a ticket restarts from (late rewinding). A model with
    no recorded snapshots rewinds to a fresh initialization (epoch 0)."""
    epoch = cfg.rewind_epoch if cfg.rewind_epoch is not None else dense.rewind_epoch
    if not dense.snapshot_epochs:
        if cfg.rewind_epoch not in (None, 0):
            raise UserError(f"{dense.path} has no recorded early weights to rewind to; use "
                            "--rewind-epoch 0 (a fresh initialization) or a model trained by "
                            "edgeprune train")
        return 0
    if epoch not in dense.snapshot_epochs:
        raise UserError(f"--rewind-epoch {epoch} is not available: the dense run kept the "
                        f"weights of epochs {dense.snapshot_epochs}")
    return epoch


def _rewind_weights(dense: ModelInput, epoch: int, seed: int) -> dict[str, torch.Tensor]:
    return dense.snapshot(epoch) if dense.snapshot_epochs else _fresh_init(dense, seed)


def _candidates(cfg: SearchConfig, T: int) -> list[int]:
    return [t for t in (cfg.et_candidates or earlytime.default_candidates(T)) if t < T]


def _keep_dense(dense: ModelInput, cfg: SearchConfig) -> tuple[str, ...]:
    names = list(prunable(dense.model))
    return tuple(([names[0]] if cfg.keep_first else []) + ([names[-1]] if cfg.keep_last else []))


def _train_cfg(cfg: SearchConfig, epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _model_from(dense: ModelInput, state: dict[str, torch.Tensor], device: str):
    model = dense.spec.build()
    model.load_state_dict(state)
    return model.to(device)


def _early_time(dense, ds, cfg, rewind, seed, device, report) -> dict:
    """Pick T' on the network after `et_epochs` epochs at full T: the dense run's snapshot when
    it kept one (no extra cost), else that many epochs trained from the rewind point."""
    T = dense.spec.timesteps
    t0 = time.perf_counter()
    snap = dense.snapshot(cfg.et_epochs) if cfg.et_epochs in dense.snapshot_epochs else None
    if snap is not None:
        model, source = _model_from(dense, snap, device), f"dense run, epoch {cfg.et_epochs}"
    else:
        model = _model_from(dense, rewind, device)
        if cfg.et_epochs > 0:
            trainer = Trainer(model, ds, T, _train_cfg(cfg, cfg.et_epochs), seed, device)
            for _ in range(cfg.et_epochs):
                trainer.train_epoch(report)
        source = f"{cfg.et_epochs} epochs at T={T} from the rewind point"
    candidates = _candidates(cfg, T)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.y_train), generator=g)[:cfg.et_batch]
    scores = earlytime.kl_scores(model, ds.x_train[idx].to(device), T, candidates)
    norm = earlytime.normalize(scores)
    pick = earlytime.pick(norm, T, cfg.et_lambda)
    return {"candidates": candidates, "kl": scores, "normalized_kl": norm, "pick": pick,
            "lambda": cfg.et_lambda, "scored_on": source, "seconds": time.perf_counter() - t0}


def _imp(store, dense, ds, cfg, rewind, t_search, keep, seed, device, report, data_id,
         rewind_epoch):
    """Rounds 1..R-1 prune and retrain from the rewind point; the last mask (round R) comes
    from round R-1's weights and needs no training here: the retrain stage trains it."""
    schedule = round_sparsities(cfg.sparsity, cfg.prune_rate)
    weights, mask, prev = _weights(dense.model), None, dense.id
    # The target is not part of a round's identity: searches to 89.9% and to 95.7% share their
    # first rounds (round r always sits at 1 - (1 - rate)^r).
    base = {"prune_rate": cfg.prune_rate, "scope": cfg.scope,
            "keep_dense": list(keep), "train": _train_cfg(cfg, cfg.round_epochs).to_dict(),
            "timesteps": t_search, "rewind_epoch": rewind_epoch, "seed": seed, "data": data_id}
    log, seconds = [], 0.0
    for r, s in enumerate(schedule[:-1], start=1):
        rid = artifact_id("round", {**base, "round": r, "sparsity": s}, [prev])
        art = store.find("round", rid)
        if art is None:
            art = _imp_round(store, rid, prev, dense, ds, cfg, rewind, t_search,
                             masklib.magnitude(weights, s, mask, cfg.scope, keep),
                             {**base, "round": r, "sparsity": s}, seed + r, device, report, r,
                             len(schedule))
        state = tensorfile.load(art.file("weights.safetensors"))
        mask = _load_mask(art)
        weights = {n: state[n] for n in mask}
        seconds += art.metrics["seconds"]
        row = {"kind": "round", "round": r, "rounds": len(schedule), **art.metrics}
        log.append(row)
        report({"event": "round", **row})
        prev = rid
    final = masklib.magnitude(weights, schedule[-1], mask, cfg.scope, keep)
    log.append({"kind": "final-mask", "round": len(schedule), "sparsity": masklib.sparsity(final)})
    return final, log, seconds


def _imp_round(store, rid, prev, dense, ds, cfg, rewind, t_search, mask, config, seed, device,
               report, r, rounds) -> Artifact:
    model = _model_from(dense, rewind, device)
    trainer = Trainer(model, ds, t_search, _train_cfg(cfg, cfg.round_epochs), seed, device, mask)
    progress = run_epochs(trainer, cfg.round_epochs, EpochCheckpoint(store.partial("round", rid)),
                          {}, lambda row, p: False,
                          lambda e: report({**e, "round": r, "rounds": rounds}))
    t0 = time.perf_counter()
    acc = evaluate(model, ds.x_test, ds.y_test, t_search, device)["accuracy"]
    seconds = progress["elapsed"] + time.perf_counter() - t0
    metrics = {"sparsity": masklib.sparsity(mask), "test_acc": acc, "seconds": seconds,
               "epochs": cfg.round_epochs, "timesteps": t_search}

    def write(tmp: Path) -> None:
        tensorfile.save(tmp / "mask.safetensors", mask)
        tensorfile.save(tmp / "weights.safetensors", model.state_dict())

    return store.write("round", rid, config=config, inputs=[prev], metrics=metrics,
                       write_files=write)


def _early_bird(store, aid, dense, ds, cfg, rewind, t_search, keep, seed, device, report):
    """Train from the rewind point, drawing a mask at the target sparsity at the start of each
    epoch, until the last q masks agree (or the epoch budget runs out)."""
    model = _model_from(dense, rewind, device)
    trainer = Trainer(model, ds, t_search, _train_cfg(cfg, cfg.round_epochs), seed, device)
    eb = EarlyBird(cfg.eb_q, cfg.eb_tau)

    def draw(progress: dict) -> bool:
        mask = masklib.magnitude(_weights(model), cfg.sparsity, scope=cfg.scope, keep_dense=keep)
        eb.window.clear()
        eb.window.extend(progress["window"])
        dist = eb.push(mask)
        progress["window"] = list(eb.window)
        row = {"kind": "eb", "epoch": trainer.epoch, "distance": dist}
        progress["log"].append(row)
        report({"event": "eb", **row, "epochs": cfg.round_epochs})
        return eb.converged(dist)

    t0 = time.perf_counter()
    start = {"window": [], "log": []}
    if not draw(start):  # the mask before any training is the first in the window
        start["elapsed"] = time.perf_counter() - t0
        start = run_epochs(trainer, cfg.round_epochs, EpochCheckpoint(store.partial("search", aid)),
                           start, lambda row, p: draw(p), report)
    else:
        start["elapsed"] = time.perf_counter() - t0
    mask, log = start["window"][-1], start["log"]
    dist = log[-1]["distance"]
    return mask, log, start["elapsed"], {"eb_epoch": log[-1]["epoch"],
                                         "eb_converged": eb.converged(dist),
                                         "eb_final_distance": dist}

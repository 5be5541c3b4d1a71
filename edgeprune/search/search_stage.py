"""The search stage: from a dense model to a ticket (a mask plus the weights it starts from).

The dense model counts as round 0: its training is not search time. Which method finds the mask
is a registry lookup (methods.py); this module resolves what the search is, checks it before any
work, and stores the result.
"""
from __future__ import annotations

import json
from dataclasses import replace

from .. import channels, masks as masklib, tensorfile
from ..artifacts import Artifact, Job, Store
from ..config import DataConfig, RunConfig, SearchConfig
from ..data import Dataset
from ..errors import UserError
from ..stage_inputs import ModelInput, data_identity
from ..models import prunable
from ..train_stage import Report
from . import earlytime, methods
from .run import GIVEN, SearchRun


def search(store: Store, dense: ModelInput, data: DataConfig, ds: Dataset, cfg: SearchConfig,
           run: RunConfig = RunConfig(), report: Report = lambda e: None,
           trunk: Artifact | None = None) -> tuple[Artifact, bool]:
    """Run (or find) a search; returns (search artifact, cached). `random` and `reinit` branch
    off `trunk`, an imp ticket of this model; without one, the imp ticket of the same settings
    is searched first."""
    method = methods.base(cfg.method)
    if method.trunk:
        if trunk is None:
            trunk, _ = search(store, dense, data, ds, replace(cfg, method=methods.TRUNK), run,
                              report)
        elif dense.id not in trunk.manifest["inputs"]:
            raise UserError(f"--from-mask {trunk.path} was searched on another model, not on "
                            f"{dense.path}")
    T = dense.spec.timesteps
    rewind_epoch = _rewind_epoch(dense, cfg)  # validated before any work or I/O
    data_id = data_identity(data, ds)
    state = SearchRun(store, dense, ds, data_id, cfg, run, report, rewind_epoch,
                      _keep_dense(dense, cfg), trunk, T)
    check_reachable(state)
    # Defaults resolved into the id, so a changed default is a new artifact, not a stale hit.
    config = {"search": cfg.to_dict(), **run.identity(), "data": data_id,
              "rewind_epoch_resolved": rewind_epoch,
              "et_candidates_resolved": earlytime.candidates(cfg, T) if cfg.early_time else None}

    def compute(job: Job) -> dict:
        state.job = job
        et_info, log = None, []
        if cfg.early_time:
            et_info = earlytime.early_time(state)
            state.timesteps = et_info["pick"]
            log.append({"kind": "early-time", **et_info})
            report({"event": "early-time", **et_info})
        found = method.finder()(state)
        _check_connected(dense, found.mask, cfg.sparsity)
        log += found.log
        seconds = found.seconds + (et_info["seconds"] if et_info else 0.0)
        metrics = {"method": cfg.method, "target_sparsity": cfg.sparsity,
                   "sparsity": masklib.sparsity(found.mask),
                   "per_layer": masklib.per_layer(found.mask), "timesteps": T,
                   "timesteps_search": state.timesteps,
                   "rewind_epoch": rewind_epoch,
                   "search_seconds": seconds, "dense_test_accuracy": dense.test_accuracy,
                   "early_time": et_info, "trunk": trunk.id if trunk else None,
                   **_granularity_metrics(state, found.mask), **found.metrics}
        report({"event": "search-done", **metrics})
        tensorfile.save(job.dir / "mask.safetensors", found.mask)
        tensorfile.save(job.dir / "rewind.safetensors", found.rewind)
        if found.trained is not None:
            tensorfile.save(job.dir / "trained.safetensors", found.trained)
        (job.dir / "log.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in log))
        plot = method.plotter()
        if plot is not None:
            plot(log, job.dir / "search.png", cfg, f"{cfg.method} on {data.name}")
        return metrics

    return store.run("search", config, [dense.id] + ([trunk.id] if trunk else []), compute,
                     collective=True)


def _granularity_metrics(run: SearchRun, mask: masklib.Masks) -> dict:
    """A channel ticket's channels kept per layer (nothing for weight tickets: their ids and
    metrics stay as they were)."""
    if run.cfg.granularity == "weight":
        return {}
    return {"granularity": run.cfg.granularity,
            "channels": {u.weight: {"units": int(mask[u.weight].shape[0]),
                                    "kept": int(channels.unit_mask(mask[u.weight]).sum())}
                         for u in run.chain}}


def check_reachable(run: SearchRun) -> None:
    """Degenerate targets stop here, before any work, judged on the dense weights with the
    criterion the search ranks by: a layer left without weights (the ranking raises, naming
    the largest sparsity that keeps every layer), or no path left from input to output."""
    _check_connected(run.dense, run.prune(run.dense.model.state_dict(), run.cfg.sparsity),
                     run.cfg.sparsity)


def _check_connected(dense: ModelInput, mask: masklib.Masks, sparsity: float) -> None:
    cut = masklib.disconnected(dense.model, mask, dense.spec.input_shape)
    if cut:
        raise UserError(f"at sparsity {sparsity:.6g} no input reaches the output: layer {cut} "
                        "keeps no weight fed by the input; lower --sparsity, or keep layers "
                        "dense (--keep-first/--keep-last)")


def _rewind_epoch(dense: ModelInput, cfg: SearchConfig) -> int | str:
    """Which of the dense run's epochs a ticket restarts from (late rewinding). A model with
    no recorded snapshots (an imported, pre-trained one) rewinds to its own weights, as
    lottery tickets of pre-trained networks do (Chen et al., 2020): a fresh initialization
    left a 90% ticket of a two-conv-layer snnTorch net at chance, its own weights kept it
    within points of the dense one (benchmarks/results/framework_compress.md).
    `--rewind-epoch 0` still asks for a fresh initialization."""
    epoch = cfg.rewind_epoch if cfg.rewind_epoch is not None else dense.rewind_epoch
    if not dense.snapshot_epochs:
        if cfg.rewind_epoch not in (None, 0):
            raise UserError(f"{dense.path} has no recorded early weights to rewind to; use "
                            "--rewind-epoch 0 (a fresh initialization), leave it unset (its own "
                            "weights), or a model trained by edgeprune train")
        return 0 if cfg.rewind_epoch == 0 else GIVEN
    if epoch not in dense.snapshot_epochs:
        raise UserError(f"--rewind-epoch {epoch} is not available: the dense run kept the "
                        f"weights of epochs {dense.snapshot_epochs}")
    return epoch


def _keep_dense(dense: ModelInput, cfg: SearchConfig) -> tuple[str, ...]:
    names = list(prunable(dense.model))
    return tuple(([names[0]] if cfg.keep_first else []) + ([names[-1]] if cfg.keep_last else []))

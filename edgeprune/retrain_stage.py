"""The retrain stage: train a ticket (mask + the weights it restarts from) at the full T."""
from __future__ import annotations

import json

import torch

from . import checkpoint, masks as masklib, tensorfile
from .artifacts import Artifact, Job, Store
from .config import DataConfig, RetrainConfig, RunConfig, resolved
from .data import Dataset
from .errors import UserError
from .stage_inputs import ModelInput, data_identity, load_mask
from .epochs import EpochCheckpoint, run_epochs
from .train_stage import Report, state_copy
from .training import BN_STATS, Trainer, evaluate, held_out, recompute_batchnorm


def retrain(store: Store, dense: ModelInput, ticket: Artifact, data: DataConfig, ds: Dataset,
            cfg: RetrainConfig = RetrainConfig(), run: RunConfig = RunConfig(),
            report: Report = lambda e: None) -> tuple[Artifact, bool]:
    """Train the ticket (its mask over its start weights) at the dense model's T with the mask
    held fixed. cfg.init, cfg.lr_resume and cfg.select: see RetrainConfig."""
    if dense.id not in ticket.manifest["inputs"]:
        raise UserError(f"mask {ticket.path} was searched on another model "
                        f"({ticket.manifest['inputs'][0]}), not on {dense.path} ({dense.id})")
    if cfg.select == "best-val" and ds.x_val is None:
        raise UserError("--select best-val chooses on a validation split: give --val-fraction")
    start = "trained.safetensors" if cfg.init == "trained" else "rewind.safetensors"
    if start not in ticket.manifest["files"]:
        raise UserError(f"{ticket.path} has no trained weights to restart from (imp searches "
                        "record them): use --init rewind")
    optim = cfg.train_config(dense.train_epochs)
    rewind_epoch = ticket.metrics.get("rewind_epoch")
    skip = rewind_epoch if (cfg.lr_resume and cfg.init == "rewind"
                            and isinstance(rewind_epoch, int)) else 0
    if skip >= optim.epochs:
        raise UserError(f"retraining for {optim.epochs} epochs cannot resume the schedule at "
                        f"epoch {skip}")
    config = {"train": resolved(optim), "data": data_identity(data, ds), **run.identity(),
              "batchnorm_stats": BN_STATS,
              "select": cfg.select, "init": cfg.init, "lr_start_epoch": skip}
    T, seed, device = dense.spec.timesteps, run.seed, run.device

    def compute(job: Job) -> dict:
        mask = load_mask(ticket)
        model = dense.spec.build()
        model.load_state_dict(tensorfile.load(ticket.file(start)))
        torch.manual_seed(seed)
        trainer = Trainer(model, ds, T, optim, seed, run, masks=mask)
        if skip:
            trainer.skip_epochs(skip)

        def on_epoch(row: dict, progress: dict) -> bool:
            if cfg.select == "best-val":
                # judged as it would be kept: with BatchNorm statistics recomputed for these
                # weights (the running ones lag them); training goes on from its own state
                training_state = state_copy(model)
                with torch.no_grad():
                    recompute_batchnorm(model, ds.x_train, T, device)
                row.update(held_out(model, ds, T, device))
                candidate = state_copy(model)
                model.load_state_dict(training_state)
            else:
                row.update(held_out(model, ds, T, device))
            progress["history"].append(row)
            if cfg.select == "best-val":  # ties: the lower loss, then the later epoch
                key = [row["val_acc"], -row["val_loss"]]
                if progress.get("best_key") is None or key >= progress["best_key"]:
                    progress.update(best_key=key, best_epoch=row["epoch"],
                                    best_state=candidate)
            report({"event": "epoch", **row})
            return False

        progress = run_epochs(trainer, optim.epochs, EpochCheckpoint(job.partial),
                              {"history": []}, on_epoch, report)
        if cfg.select == "best-val":
            model.load_state_dict(progress["best_state"])
        recompute_batchnorm(model, ds.x_train, T, device)
        ev = evaluate(model, ds.x_test, ds.y_test, T, device)
        val = held_out(model, ds, T, device)
        achieved = masklib.of_model(model)
        checkpoint.save(job.dir / "model.pt", dense.spec, model)
        (job.dir / "history.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in progress["history"]))
        tm = ticket.metrics
        return {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                "dense_test_accuracy": dense.test_accuracy,
                "sparsity": masklib.sparsity(achieved), "per_layer": masklib.per_layer(achieved),
                "spike_rate": ev["spike_rate"], "mean_spike_rate": ev["mean_spike_rate"],
                "train_seconds": progress["elapsed"], "epochs": optim.epochs,
                "method": tm.get("method"), "timesteps": T,
                "timesteps_search": tm.get("timesteps_search"),
                "search_seconds": tm.get("search_seconds"), "rewind_epoch": tm.get("rewind_epoch"),
                "selected_epoch": progress.get("best_epoch", trainer.epoch),
                **({"val_accuracy": val["val_acc"]} if "val_acc" in val else {}),
                **trainer.execution()}

    return store.run("retrain", config, [dense.id, ticket.id], compute, collective=True)

"""The retrain stage: train a ticket (mask + the weights it restarts from) at the full T."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint, masks as masklib, tensorfile
from .artifacts import Artifact, Job, Store, open_artifact
from .config import DataConfig, RunConfig, TrainConfig, resolved
from .data import Dataset
from .errors import UserError
from .inputs import ModelInput, data_identity
from .resume import EpochCheckpoint, run_epochs
from .train import Report
from .trainer import Trainer, evaluate


def open_search(path: Path) -> Artifact:
    art = open_artifact(path)
    if art.stage != "search":
        raise UserError(f"{art.path} is a {art.stage} artifact, not a search (mask) artifact")
    return art


def load_mask(ticket: Artifact) -> masklib.Masks:
    return {k: v.bool() for k, v in tensorfile.load(ticket.file("mask.safetensors")).items()}


def retrain(store: Store, dense: ModelInput, ticket: Artifact, data: DataConfig, ds: Dataset,
            optim: TrainConfig, run: RunConfig = RunConfig(),
            report: Report = lambda e: None) -> tuple[Artifact, bool]:
    """Train `rewind * mask` at the dense model's T with the mask held fixed."""
    if dense.id not in ticket.manifest["inputs"]:
        raise UserError(f"mask {ticket.path} was searched on another model "
                        f"({ticket.manifest['inputs'][0]}), not on {dense.path} ({dense.id})")
    config = {"train": resolved(optim), "data": data_identity(data, ds), **run.identity()}
    T, seed, device = dense.spec.timesteps, run.seed, run.device

    def compute(job: Job) -> dict:
        mask = load_mask(ticket)
        model = dense.spec.build()
        model.load_state_dict(tensorfile.load(ticket.file("rewind.safetensors")))
        torch.manual_seed(seed)
        trainer = Trainer(model, ds, T, optim, seed, run, masks=mask)

        def on_epoch(row: dict, progress: dict) -> bool:
            row.update(test_acc=evaluate(model, ds.x_test, ds.y_test, T, device)["accuracy"])
            progress["history"].append(row)
            report({"event": "epoch", **row})
            return False

        progress = run_epochs(trainer, optim.epochs, EpochCheckpoint(job.partial),
                              {"history": []}, on_epoch, report)
        ev = evaluate(model, ds.x_test, ds.y_test, T, device)
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
                **trainer.execution()}

    return store.run("retrain", config, [dense.id, ticket.id], compute, collective=True)

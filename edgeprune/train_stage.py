"""The train stage: a dense SNN from data, a model config and a schedule."""
from __future__ import annotations

import json
from typing import Callable

import torch

from . import checkpoint, tensorfile
from .artifacts import Artifact, Job, Store
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, resolved
from .data import Dataset
from .stage_inputs import data_identity
from .models import ARCH_REVISION, ModelSpec, prunable
from .epochs import EpochCheckpoint, run_epochs
from .training import BN_STATS, Trainer, evaluate, held_out, recompute_batchnorm

Report = Callable[[dict], None]


def default_rewind_epoch(epochs: int) -> int:
    """Late rewinding point scaled from the paper's epoch 20 of 300."""
    return max(1, round(epochs * 20 / 300)) if epochs > 1 else 0


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(store: Store, data: DataConfig, ds: Dataset, model_cfg: ModelConfig,
          optim: TrainConfig, run: RunConfig = RunConfig(),
          report: Report = lambda e: None) -> tuple[Artifact, bool]:
    """Train a dense SNN (or find it). Returns (artifact, cached)."""
    spec = ModelSpec.for_data(model_cfg, ds)
    config = {"data": data_identity(data, ds), "model": spec.to_dict(),
              "arch_revision": ARCH_REVISION[spec.arch], "train": resolved(optim),
              "batchnorm_stats": BN_STATS,
              **run.identity()}
    seed, device = run.seed, run.device

    def compute(job: Job) -> dict:
        torch.manual_seed(seed)
        model = spec.build()
        trainer = Trainer(model, ds, spec.timesteps, optim, seed, run)
        # Early weights, kept for the ticket search: late rewinding restores them (any of the
        # first five epochs, or the default point), and Early-Time scores timesteps on the
        # network after a few epochs at full T.
        rewind = default_rewind_epoch(optim.epochs)
        keep = {e for e in (0, 1, 2, 3, 4, 5, rewind) if e <= optim.epochs}

        def on_epoch(row: dict, progress: dict) -> bool:
            row.update(held_out(model, ds, spec.timesteps, device))
            progress["history"].append(row)
            if trainer.epoch in keep:
                progress["snapshots"][trainer.epoch] = state_copy(model)
            report({"event": "epoch", **row})
            return False

        progress = run_epochs(trainer, optim.epochs, EpochCheckpoint(job.partial),
                              {"history": [], "snapshots": {0: state_copy(model)}}, on_epoch,
                              report)
        snapshots = progress["snapshots"]
        recompute_batchnorm(model, ds.x_train, spec.timesteps, device)
        ev = evaluate(model, ds.x_test, ds.y_test, spec.timesteps, device)
        val = held_out(model, ds, spec.timesteps, device)
        checkpoint.save(job.dir / "model.pt", spec, model)
        tensorfile.save(job.dir / "snapshots.safetensors",
                        {f"epoch{e}/{k}": v for e, sd in snapshots.items() for k, v in sd.items()})
        (job.dir / "history.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in progress["history"]))
        return {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                "spike_rate": ev["spike_rate"], "mean_spike_rate": ev["mean_spike_rate"],
                "train_seconds": progress["elapsed"], "epochs": optim.epochs,
                "prunable_weights": sum(p.numel() for p in prunable(model).values()),
                "parameters": sum(p.numel() for p in model.parameters()),
                "rewind_epoch": rewind, "snapshot_epochs": sorted(snapshots),
                **({"val_accuracy": val["val_acc"]} if "val_acc" in val else {}),
                **trainer.execution()}

    return store.run("train", config, [], compute, collective=True)

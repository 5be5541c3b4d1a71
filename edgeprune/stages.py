"""The stages as functions from configs and input artifacts to a new artifact.

Each stage resolves its full config, derives the artifact id from it, and returns the stored
artifact when that id exists already (a cache hit) instead of running again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint, data as datalib
from .artifacts import Artifact, Store, artifact_id
from .models import ModelSpec, prunable
from .neurons import NeuronParams
from .training import TrainConfig, Trainer, evaluate

Report = Callable[[dict], None]


def _quiet(_event: dict) -> None:
    pass


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    train_subset: int | None = None
    subset_seed: int = 0

    def load(self) -> datalib.Dataset:
        return datalib.load(self.name).subset(self.train_subset, self.subset_seed)


def resolve_device(device: str) -> str:
    from .errors import UserError

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}: choose cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but this torch build sees no CUDA GPU")
    return device


def train(store: Store, data_cfg: DataConfig, arch: str, width: float, pool: str,
          timesteps: int, encoding: str, neuron: NeuronParams, cfg: TrainConfig, seed: int,
          device: str = "cpu", report: Report = _quiet) -> tuple[Artifact, bool]:
    """Train a dense SNN. Returns (artifact, cached)."""
    ds = data_cfg.load()
    mean, std = ds.channel_stats()
    spec = ModelSpec(arch=arch, width=width, pool=pool, timesteps=timesteps, encoding=encoding,
                     neuron=neuron, input_shape=ds.input_shape, num_classes=ds.num_classes,
                     class_names=tuple(ds.class_names), mean=tuple(mean), std=tuple(std))
    config = {"data": {"name": data_cfg.name, "train_subset": data_cfg.train_subset,
                       "subset_seed": data_cfg.subset_seed, "fingerprint": datalib.fingerprint(ds)},
              "model": spec.to_dict(), "train": cfg.to_dict(), "seed": seed}
    aid = artifact_id("train", config, [])
    found = store.find("train", aid)
    if found:
        return found, True
    store.writable()

    torch.manual_seed(seed)
    model = spec.build()
    trainer = Trainer(model, ds, timesteps, cfg, seed=seed, device=device)
    history, t0 = [], time.perf_counter()
    for _ in range(cfg.epochs):
        row = trainer.train_epoch(report)
        row.update(test_acc=evaluate(model, ds.x_test, ds.y_test, timesteps, device)["accuracy"])
        history.append(row)
        report({"event": "epoch", **row})
    seconds = time.perf_counter() - t0
    ev = evaluate(model, ds.x_test, ds.y_test, timesteps, device)
    metrics = {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
               "spike_rate": ev["spike_rate"], "mean_spike_rate": ev["mean_spike_rate"],
               "train_seconds": seconds, "epochs": cfg.epochs,
               "prunable_weights": sum(p.numel() for p in prunable(model).values()),
               "parameters": sum(p.numel() for p in model.parameters())}

    def write(tmp: Path) -> None:
        checkpoint.save(tmp / "model.pt", spec, model)
        (tmp / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    return store.write("train", aid, config=config, inputs=[], metrics=metrics,
                       write_files=write), False

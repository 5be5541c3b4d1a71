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

from . import checkpoint, data as datalib, tensorfile
from .artifacts import Artifact, Store, artifact_id, open_artifact, sha256_file
from .errors import UserError
from .models import ARCH_REVISION, ModelSpec, prunable
from .neurons import NeuronParams
from .resume import EpochCheckpoint, run_epochs
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
    config = {"data": data_identity(data_cfg, ds), "model": spec.to_dict(),
              "arch_revision": ARCH_REVISION[arch], "train": cfg.to_dict(), "seed": seed}
    aid = artifact_id("train", config, [])
    found = store.find("train", aid)
    if found:
        return found, True
    store.writable()

    torch.manual_seed(seed)
    model = spec.build()
    trainer = Trainer(model, ds, timesteps, cfg, seed=seed, device=device)
    # Early weights, kept for the ticket search: late rewinding restores them, and Early-Time
    # scores timesteps on the network after a few epochs at full T.
    rewind = default_rewind_epoch(cfg.epochs)
    keep = {e for e in (0, 1, 2, rewind) if e <= cfg.epochs}

    def on_epoch(row: dict, progress: dict) -> bool:
        row.update(test_acc=evaluate(model, ds.x_test, ds.y_test, timesteps, device)["accuracy"])
        progress["history"].append(row)
        if trainer.epoch in keep:
            progress["snapshots"][trainer.epoch] = _state(model)
        report({"event": "epoch", **row})
        return False

    progress = run_epochs(trainer, cfg.epochs, EpochCheckpoint(store.partial("train", aid)),
                          {"history": [], "snapshots": {0: _state(model)}}, on_epoch, report)
    history, snapshots, seconds = progress["history"], progress["snapshots"], progress["elapsed"]
    ev = evaluate(model, ds.x_test, ds.y_test, timesteps, device)
    metrics = {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
               "spike_rate": ev["spike_rate"], "mean_spike_rate": ev["mean_spike_rate"],
               "train_seconds": seconds, "epochs": cfg.epochs,
               "prunable_weights": sum(p.numel() for p in prunable(model).values()),
               "parameters": sum(p.numel() for p in model.parameters()),
               "rewind_epoch": rewind, "snapshot_epochs": sorted(snapshots)}

    def write(tmp: Path) -> None:
        checkpoint.save(tmp / "model.pt", spec, model)
        tensorfile.save(tmp / "snapshots.safetensors",
                        {f"epoch{e}/{k}": v for e, sd in snapshots.items() for k, v in sd.items()})
        (tmp / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    return store.write("train", aid, config=config, inputs=[], metrics=metrics,
                       write_files=write), False


def default_rewind_epoch(epochs: int) -> int:
    """Late rewinding point scaled from the paper's epoch 20 of 300."""
    return max(1, round(epochs * 20 / 300)) if epochs > 1 else 0


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class ModelInput:
    """A model handed to a stage: an edgeprune model.pt, inside an artifact folder or not."""

    path: Path
    spec: ModelSpec
    model: torch.nn.Module
    id: str
    artifact: Artifact | None

    @property
    def data_config(self) -> DataConfig | None:
        d = self.artifact.config.get("data") if self.artifact else None
        return DataConfig(d["name"], d.get("train_subset"), d.get("subset_seed", 0)) if d else None

    @property
    def train_epochs(self) -> int | None:
        if self.artifact is None:
            return None
        return self.artifact.config.get("train", {}).get("epochs")

    def snapshot(self, epoch: int) -> dict[str, torch.Tensor] | None:
        """Weights after `epoch` epochs of the dense training, if the train stage kept them."""
        if self.artifact is None or "snapshots.safetensors" not in self.artifact.manifest["files"]:
            return None
        sd = tensorfile.group(tensorfile.load(self.artifact.file("snapshots.safetensors")),
                              f"epoch{epoch}")
        return sd or None

    @property
    def snapshot_epochs(self) -> list[int]:
        return list(self.artifact.metrics.get("snapshot_epochs", [])) if self.artifact else []

    @property
    def rewind_epoch(self) -> int | None:
        return self.artifact.metrics.get("rewind_epoch") if self.artifact else None

    @property
    def test_accuracy(self) -> float | None:
        return self.artifact.metrics.get("test_accuracy") if self.artifact else None


def open_model(path: Path, device: str = "cpu") -> ModelInput:
    """Load a model.pt (or an artifact folder holding one), checking its sha256 when it has a
    manifest. A loose file is identified by its content hash."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise UserError(f"model file {path} does not exist")
    artifact = None
    if (path.parent / "manifest.json").exists():
        artifact = open_artifact(path.parent)
        path = artifact.file(path.name)
        mid = artifact.id
    else:
        mid = "file-" + sha256_file(path)[:12]
    spec, model = checkpoint.load(path, device)
    return ModelInput(path, spec, model, mid, artifact)


def dataset_for(model: ModelInput, data: str | None, train_subset: int | None = None
                ) -> tuple[DataConfig, datalib.Dataset]:
    """The data a model-taking stage uses: `--data` if given, else what the model was trained
    on; it must fit the model's input shape and classes."""
    if data is not None:
        cfg = DataConfig(data, train_subset)
    elif model.data_config is not None:
        cfg = model.data_config
        if train_subset is not None:
            cfg = DataConfig(cfg.name, train_subset, cfg.subset_seed)
    else:
        raise UserError(f"{model.path} does not say what data it was trained on: pass --data")
    ds = cfg.load()
    if tuple(ds.input_shape) != tuple(model.spec.input_shape):
        raise UserError(f"data {cfg.name} has images of shape {list(ds.input_shape)} but the "
                        f"model expects {list(model.spec.input_shape)}")
    if ds.num_classes > model.spec.num_classes:
        raise UserError(f"data {cfg.name} has {ds.num_classes} classes but the model "
                        f"outputs {model.spec.num_classes}")
    return cfg, ds


def data_identity(cfg: DataConfig, ds: datalib.Dataset) -> dict:
    return {"name": cfg.name, "train_subset": cfg.train_subset, "subset_seed": cfg.subset_seed,
            "fingerprint": datalib.fingerprint(ds)}

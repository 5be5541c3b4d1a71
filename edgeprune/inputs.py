"""What the model-taking stages take in, read from the run directory: a model.pt (from an
artifact or a loose file), the data it goes with, and a search artifact's ticket (its mask)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import checkpoint, data as datalib, masks as masklib, tensorfile
from .artifacts import Artifact, MANIFEST, open_artifact
from .bounded_read import regular_size
from .config import DataConfig
from .errors import UserError
from .hashing import file_sha256
from .models import ModelSpec


@dataclass
class ModelInput:
    """A model handed to a stage: an edgeprune model.pt, inside an artifact folder or not."""

    path: Path
    spec: ModelSpec
    model: torch.nn.Module
    id: str
    artifact: Artifact | None

    def _recorded(self, section: str, key: str, default=None):
        return (self.artifact.manifest.get(section, {}) if self.artifact else {}).get(key, default)

    @property
    def data_config(self) -> DataConfig | None:
        d = self._recorded("config", "data")
        return DataConfig(d["name"], d.get("train_subset"), d.get("test_subset"),
                          d.get("val_fraction", 0.0)) if d else None

    @property
    def train_epochs(self) -> int | None:
        return (self._recorded("config", "train") or {}).get("epochs")

    @property
    def snapshot_epochs(self) -> list[int]:
        return list(self._recorded("metrics", "snapshot_epochs", []))

    @property
    def rewind_epoch(self) -> int | None:
        return self._recorded("metrics", "rewind_epoch")

    @property
    def test_accuracy(self) -> float | None:
        return self._recorded("metrics", "test_accuracy")

    def snapshot(self, epoch: int) -> dict[str, torch.Tensor] | None:
        """Weights after `epoch` epochs of the dense training, if the train stage kept them."""
        if epoch not in self.snapshot_epochs:
            return None
        sd = tensorfile.group(tensorfile.load(self.artifact.file("snapshots.safetensors")),
                              f"epoch{epoch}")
        return sd or None


def open_model(path: Path, device: str = "cpu") -> ModelInput:
    """Load a model.pt (or an artifact folder holding one), checking its sha256 when it has a
    manifest. A loose file is identified by its content hash."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    regular_size(path, "model file")  # before it is hashed: a FIFO would hang that read
    artifact = None
    if (path.parent / MANIFEST).exists():
        artifact = open_artifact(path.parent)
        path = artifact.file(path.name)
        mid = artifact.id
    else:
        mid = "file-" + file_sha256(path)[:12]
    spec, model = checkpoint.load(path, device)
    return ModelInput(path, spec, model, mid, artifact)


def open_search(path: Path) -> Artifact:
    art = open_artifact(path)
    if art.stage != "search":
        raise UserError(f"{art.path} is a {art.stage} artifact, not a search (mask) artifact")
    return art


def load_mask(ticket: Artifact) -> masklib.Masks:
    """The mask of a search (or IMP round) artifact."""
    return {k: v.bool() for k, v in tensorfile.load(ticket.file("mask.safetensors")).items()}


def load_data(cfg: DataConfig) -> datalib.Dataset:
    return (datalib.load(cfg.name).subset(cfg.train_subset, seed=0)
            .test_subset(cfg.test_subset).split_validation(cfg.val_fraction))


def dataset_for(model: ModelInput, cfg: DataConfig) -> tuple[DataConfig, datalib.Dataset]:
    """The data a model-taking stage uses: `cfg.name` if given, else what the model was trained
    on; it must fit the model's input shape and classes."""
    if cfg.name is None:
        if model.data_config is None:
            raise UserError(f"{model.path} does not say what data it was trained on: pass --data")
        rec = model.data_config
        cfg = replace(rec, **{k: getattr(cfg, k) for k in ("train_subset", "test_subset")
                              if getattr(cfg, k) is not None},
                      val_fraction=cfg.val_fraction or rec.val_fraction)
    ds = load_data(cfg)
    if tuple(ds.input_shape) != tuple(model.spec.input_shape):
        raise UserError(f"data {cfg.name} has images of shape {list(ds.input_shape)} but the "
                        f"model expects {list(model.spec.input_shape)}")
    if ds.num_classes > model.spec.num_classes:
        raise UserError(f"data {cfg.name} has {ds.num_classes} classes but the model "
                        f"outputs {model.spec.num_classes}")
    return cfg, ds


def data_identity(cfg: DataConfig, ds: datalib.Dataset) -> dict:
    """The data's part of an artifact's config: its name, subset and a content hash, so an id
    changes when a user's files change."""
    return {"name": cfg.name, "train_subset": cfg.train_subset, "test_subset": cfg.test_subset,
            "val_fraction": cfg.val_fraction, "fingerprint": datalib.fingerprint(ds)}

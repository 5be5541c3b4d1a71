"""Epoch checkpoints, so a killed training, search or retraining continues where it stopped.

A checkpoint holds everything that decides what happens next (weights, optimizer and schedule
state, the data-order generator, torch's global RNG, the epoch, and the stage's own progress),
so a resumed run ends bit-identical to an uninterrupted one on CPU. It is written under a
temporary name and renamed into place, and read with `weights_only=True` (no pickled code).
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import distributed, faults
from .checkpoint import save_torch
from .diskspace import full_error, is_full
from .errors import UserError


class EpochCheckpoint:
    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:
            # A checkpoint is written atomically, so a bad one was damaged afterwards; starting
            # over is always correct, only slower.
            self.clear()
            return None

    def save(self, state: dict) -> None:
        if not distributed.world().main:  # every rank holds the same state; rank 0 writes it
            return
        faults.reach("checkpoint-write")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_torch(self.path, state)
        except OSError as e:
            if is_full(e):
                raise full_error(self.path, e=e) from None
            raise UserError(f"cannot save checkpoint {self.path}: {e.strerror or e}") from None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run_epochs(trainer, epochs: int, ckpt: EpochCheckpoint, progress: dict, on_epoch,
               report=None) -> dict:
    """Train to `epochs`, resuming from `ckpt` if it holds a checkpoint and saving one after
    every epoch. `progress` is the stage's own state (history, snapshots, ...); `on_epoch(row,
    progress)` updates it after each epoch and returns True to stop early. `progress["elapsed"]`
    accumulates compute seconds across resumes."""
    import time

    saved = ckpt.load()
    if saved is not None:
        trainer.restore(saved["trainer"])
        progress = saved["progress"]
        if progress.get("stopped"):
            return progress
    progress.setdefault("elapsed", 0.0)
    while trainer.epoch < epochs:
        t0 = time.perf_counter()
        row = trainer.train_epoch(report)
        stop = bool(on_epoch(row, progress))
        progress["elapsed"] += time.perf_counter() - t0
        progress["stopped"] = stop
        ckpt.save({"trainer": trainer.state(), "progress": progress})
        if stop:
            break
    return progress

"""Early-Bird tickets (You et al., 2020): train from the rewind point, draw a mask at the target
sparsity at the start of each epoch, and stop when the mask has stopped moving: its normalized
Hamming distance to each of the previous q-1 masks is below tau."""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from .. import distributed, masks as masklib, plots
from ..epochs import EpochCheckpoint, run_epochs
from .run import Found, SearchRun


class EarlyBird:
    def __init__(self, q: int = 5, tau: float = 0.02):
        self.q, self.tau = q, tau
        self.window: deque = deque(maxlen=q)

    def push(self, mask: masklib.Masks) -> float | None:
        """Add the newest mask; return the largest distance to the q-1 before it, or None
        while fewer than q masks have been seen."""
        self.window.append(mask)
        if len(self.window) < self.q:
            return None
        newest = self.window[-1]
        return max(masklib.hamming(newest, m) for m in list(self.window)[:-1])

    def converged(self, distance: float | None) -> bool:
        return distance is not None and distance < self.tau


def find(run: SearchRun) -> Found:
    """Draw a mask before training and after every epoch, until the last q masks agree (or the
    epoch budget, round_epochs, runs out)."""
    cfg = run.cfg
    rewind = run.rewind_weights()
    model = run.model_from(rewind)
    trainer = run.trainer(model, cfg.round_epochs, run.seed)
    eb = EarlyBird(cfg.eb.q, cfg.eb.tau)

    def draw(progress: dict) -> bool:
        mask = distributed.broadcast(run.prune(model.state_dict(), cfg.sparsity))
        eb.window.clear()
        eb.window.extend(progress["window"])
        dist = eb.push(mask)
        progress["window"] = list(eb.window)
        row = {"kind": "eb", "epoch": trainer.epoch, "distance": dist}
        progress["log"].append(row)
        run.report({"event": "eb", **row, "epochs": cfg.round_epochs})
        return eb.converged(dist)

    t0 = time.perf_counter()
    progress = {"window": [], "log": []}
    stopped = draw(progress)  # the mask before any training is the first in the window
    progress["elapsed"] = time.perf_counter() - t0
    if not stopped:
        progress = run_epochs(trainer, cfg.round_epochs, EpochCheckpoint(run.job.partial),
                              progress, lambda row, p: draw(p), run.report)
    last = progress["log"][-1]
    return Found(progress["window"][-1], rewind, log=progress["log"],
                 seconds=progress["elapsed"],
                 metrics={"eb_epoch": last["epoch"], "eb_converged": eb.converged(last["distance"]),
                          "eb_final_distance": last["distance"]})


def plot(log: list[dict], path: Path, cfg, title: str) -> None:
    plots.eb_distances(log, path, cfg.eb.tau, title)

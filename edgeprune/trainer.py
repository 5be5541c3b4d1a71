"""Training and evaluation of an SNN: SGD with momentum, cosine LR, loss = mean over timesteps
of per-step cross-entropy, prediction = argmax of the logits summed over time."""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, faults, masks as masklib
from .config import TrainConfig
from .data import Dataset, augment
from .errors import UserError
from .models import spiking_layers


class Diverged(UserError):
    """A non-finite loss or weight: the run stops (exit 2) before anything broken is stored."""


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over timesteps (and batch) of the per-step cross-entropy. logits: (T, B, C)."""
    return F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]))


def predict(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum(0).argmax(-1)


class Trainer:
    """One training run's mutable state (model, optimizer, schedule, data order), advanced an
    epoch at a time so callers can checkpoint, stop early, or score masks between epochs."""

    def __init__(self, model: nn.Module, data: Dataset, timesteps: int, cfg: TrainConfig,
                 seed: int, device: str = "cpu", masks: masklib.Masks | None = None):
        self.model, self.data, self.timesteps, self.cfg = model.to(device), data, timesteps, cfg
        self.device, self.masks = device, masks
        self.world = distributed.world()
        # under torchrun the forward/backward goes through DDP (gradients averaged across
        # ranks); self.model stays the plain module for evaluation and checkpoints
        self.net = model
        if distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            # a 1-channel conv weight's strides are ambiguous; DDP's notice about it is noise
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            self.net = DistributedDataParallel(
                model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                else None)
        self.steps_per_epoch = -(-len(data.y_train) // cfg.batch_size)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt, T_max=cfg.epochs * self.steps_per_epoch)
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # Poisson spikes draw from the global RNG: same seed, same run
        self.epoch = 0
        if masks is not None:
            masklib.apply(model, masks)

    def train_epoch(self, report: Callable[[dict], None] | None = None) -> dict:
        model, cfg = self.model, self.cfg
        model.train()
        order = torch.randperm(len(self.data.y_train), generator=self.gen)
        flip = self.data.name in ("cifar10",)
        total_loss, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        for i in range(self.steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x, y = self.data.x_train[idx], self.data.y_train[idx]
            if cfg.augment:  # drawn for the whole global batch: every rank draws the same
                x = augment(x, self.gen, flip=flip)
            x, y, weight = self._shard(x, y)
            x, y = x.to(self.device), y.to(self.device)
            logits = self.net(x, self.timesteps)
            loss = loss_fn(logits, y)
            value = loss.item()
            if weight != 1.0:  # DDP averages ranks: weigh each by its share of the batch
                loss = loss * weight
            if not math.isfinite(value):
                raise Diverged(f"training diverged: the loss is {value} at epoch {self.epoch + 1}"
                               f", step {i + 1}; nothing was stored for this run (its last good "
                               "epoch stays checkpointed): lower --lr or check the data")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.masks is not None:
                masklib.mask_grads(model, self.masks)
            self.opt.step()
            self.sched.step()
            if self.masks is not None:
                masklib.apply(model, self.masks)
            faults.reach("step")
            total_loss += value * len(y)
            correct += int((predict(logits.detach()) == y).sum())
            seen += len(y)
            if report:
                report({"epoch": self.epoch + 1, "step": i + 1, "steps": self.steps_per_epoch,
                        "loss": total_loss / seen, "train_acc": correct / seen})
        self.epoch += 1
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise Diverged(f"training diverged: weight {bad[0]} is not finite after epoch "
                           f"{self.epoch}; nothing was stored for this run: lower --lr")
        return {"epoch": self.epoch, "loss": total_loss / seen, "train_acc": correct / seen,
                "seconds": time.perf_counter() - t0}

    def _shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's part of the global batch, and the weight that makes DDP's average of
        per-rank mean losses the mean over the global batch (ranks may get unequal parts)."""
        w = self.world
        if not w.parallel:
            return x, y, 1.0
        mine = torch.arange(w.rank, len(y), w.size)
        if len(mine) == 0:  # a tail batch smaller than the world: take one sample, weight 0
            return x[:1], y[:1], 0.0
        return x[mine], y[mine], len(mine) * w.size / len(y)

    def state(self) -> dict:
        """Everything the next epoch depends on, for an exact resume."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "gen": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, timesteps: int,
             device: str = "cpu", batch_size: int = 500) -> dict:
    """Test accuracy, loss and the mean spike rate of each LIF layer."""
    model.eval().to(device)
    counts: dict[str, list[float]] = {}

    def hook(name):
        def record(_m, _inp, out):
            c = counts.setdefault(name, [0.0, 0])
            c[0] += float(out.sum())
            c[1] += out.numel()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in spiking_layers(model).items()]
    correct, total_loss = 0, 0.0
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb, timesteps)
            total_loss += float(loss_fn(logits, yb)) * len(yb)
            correct += int((predict(logits) == yb).sum())
    finally:
        for h in handles:
            h.remove()
    rates = {n: c[0] / c[1] for n, c in counts.items()}
    return {"accuracy": correct / len(y), "loss": total_loss / len(y), "spike_rate": rates,
            "mean_spike_rate": sum(rates.values()) / len(rates) if rates else 0.0}

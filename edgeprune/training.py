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
from .config import RunConfig, TrainConfig
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


def schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Cosine decay over the run, after `warmup_epochs` of linear warm-up (linear scaling: a k
    times larger batch takes a k times larger learning rate, reached gradually)."""
    from torch.optim import lr_scheduler

    total = cfg.epochs * steps_per_epoch
    warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    if warm <= 0:
        return lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return lr_scheduler.SequentialLR(
        opt, [lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm),
              lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm)], milestones=[warm])


class Trainer:
    """One training run's mutable state (model, optimizer, schedule, data order), advanced an
    epoch at a time so callers can checkpoint, stop early, or score masks between epochs."""

    def __init__(self, model: nn.Module, data: Dataset, timesteps: int, cfg: TrainConfig,
                 seed: int, run: RunConfig = RunConfig(), masks: masklib.Masks | None = None):
        device = run.device
        self.model, self.data, self.timesteps, self.cfg = model.to(device), data, timesteps, cfg
        self.run, self.device, self.masks = run, device, masks
        self.world = distributed.world()
        # Data that fits stays on the device: no per-batch host copies.
        self.x_train, self.y_train = data.x_train.to(device), data.y_train.to(device)
        self.channels_last = (run.channels_last if run.channels_last is not None
                              else any(isinstance(m, nn.Conv2d) for m in model.modules()))
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.autocast = dict(device_type=torch.device(device).type, enabled=run.precision != "fp32",
                             dtype=torch.float16 if run.precision == "fp16" else torch.bfloat16)
        self.scaler = torch.amp.GradScaler(self.autocast["device_type"],
                                           enabled=run.precision == "fp16")
        # Under torchrun the forward/backward goes through DDP (gradients averaged across
        # ranks); self.model stays the plain module for evaluation and checkpoints.
        self.net = model
        if distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            # a 1-channel conv weight's strides are ambiguous; DDP's notice about it is noise
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            self.net = DistributedDataParallel(
                model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                else None)
        if run.compile:
            # static shapes: a full and a tail batch are two graphs; dynamic ones trip inductor
            self.net = torch.compile(self.net, dynamic=False)
        self.steps_per_epoch = -(-len(data.y_train) // cfg.batch_size)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = schedule(self.opt, cfg, self.steps_per_epoch)
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # Poisson spikes draw from the global RNG: same seed, same run
        self.epoch = 0
        if masks is not None:
            masklib.apply(model, masks)

    def skip_epochs(self, epochs: int) -> None:
        """Start `epochs` into the learning-rate schedule, as if they had been trained (a ticket
        rewound to epoch k of the dense run continues that run's schedule from there)."""
        with warnings.catch_warnings():  # stepping the schedule without training is the point
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(epochs * self.steps_per_epoch):
                self.sched.step()
        self.epoch = epochs

    def execution(self) -> dict:
        """How this run executed (for the manifest's metrics; not part of the id)."""
        return {"device": self.device, "precision": self.run.precision,
                "compiled": self.run.compile, "channels_last": self.channels_last,
                "world_size": self.world.size}

    def train_epoch(self, report: Callable[[dict], None] | None = None) -> dict:
        model, cfg = self.model, self.cfg
        model.train()
        order = torch.randperm(len(self.data.y_train), generator=self.gen).to(self.device)
        flip = self.data.name in ("cifar10",)
        total_loss, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        for i in range(self.steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x, y = self.x_train[idx], self.y_train[idx]
            if cfg.augment:  # drawn for the whole global batch: every rank draws the same
                x = augment(x, self.gen, flip=flip)
            x, y, weight = self._shard(x, y)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(**self.autocast):
                logits = self.net(x, self.timesteps)
                loss = loss_fn(logits.float(), y)
            value = loss.item()
            if not math.isfinite(value):
                raise Diverged(f"training diverged: the loss is {value} at epoch {self.epoch + 1}"
                               f", step {i + 1}; nothing was stored for this run (its last good "
                               "epoch stays checkpointed): lower --lr or check the data")
            if weight != 1.0:  # DDP averages ranks: weigh each by its share of the batch
                loss = loss * weight
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.masks is not None:
                masklib.mask_grads(model, self.masks)
            self.scaler.step(self.opt)
            self.scaler.update()
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
                "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state.get("scaler", {}))
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = state["epoch"]


# Images the BatchNorm statistics are recomputed on at the end of a run (the first ones of the
# training set: a fixed choice, so the result does not depend on the seed's data order).
BN_RECOMPUTE_IMAGES = 2048
# In the train and retrain stages' ids: models stored before the recomputation get new ids.
BN_STATS = "recomputed/1"


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, timesteps: int, device: str = "cpu",
                        images: int = BN_RECOMPUTE_IMAGES, batch_size: int = 256) -> int:
    """Replace every BatchNorm's running statistics by their plain average over the first
    `images` training images, for the final weights. With momentum 0.1 they lag the weights
    by ~10 steps and start at (0, 1): after a few dozen steps a 13-layer network evaluated with
    them was at chance while the same weights with recomputed statistics were not
    (benchmarks/results/deep-learning). Weights are untouched; the global RNG (Poisson spikes)
    is restored. Returns the number of images used (0: no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    rng, momenta, was_training = torch.get_rng_state(), [m.momentum for m in norms], model.training
    model.to(device).train()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        n = min(images, len(x))
        for i in range(0, n, batch_size):
            model(x[i:min(i + batch_size, n)].to(device), timesteps)
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)
        torch.set_rng_state(rng)
    return n


def held_out(model: nn.Module, ds: Dataset, timesteps: int, device: str = "cpu") -> dict:
    """An epoch's report on data it did not train on: test accuracy (for people; never used to
    select anything), and validation accuracy and loss when the dataset has a split."""
    row = {"test_acc": evaluate(model, ds.x_test, ds.y_test, timesteps, device)["accuracy"]}
    if ds.x_val is not None:
        v = evaluate(model, ds.x_val, ds.y_val, timesteps, device)
        row.update(val_acc=v["accuracy"], val_loss=v["loss"])
    return row


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

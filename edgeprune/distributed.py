"""Data-parallel runs under `torchrun`, on PyTorch's own engine (DistributedDataParallel):
gloo on CPU, nccl on GPU. Nothing changes but the launcher:

    torchrun --nproc-per-node 2 -m cli compress --data fashion-mnist ...

- `batch_size` is the global batch: each step takes the same global batch as a single process
  would and splits it across the ranks, so the gradient DDP averages is the one a single
  process computes on that batch (BatchNorm statistics are per rank: the one difference).
- Every rank trains (DDP needs all of them); rank 0 alone writes artifacts, checkpoints and
  progress, and every rank continues from what rank 0 wrote. Decisions that must agree (masks,
  Early-Time's pick, "is this artifact cached?") are made on rank 0 and broadcast.

Torch is imported lazily: the store (which asks `world()`) runs on devices without PyTorch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

_INITIALIZED = False


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    if not launched():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str) -> str:
    """Join the process group (once) and return this rank's device: cuda:LOCAL_RANK on GPU."""
    global _INITIALIZED
    if not launched():
        return device
    import torch
    import torch.distributed as dist

    w = world()
    if device.startswith("cuda"):
        device = f"cuda:{w.local_rank}"
        torch.cuda.set_device(w.local_rank)
    if not _INITIALIZED and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        _INITIALIZED = True
    return device


def active() -> bool:
    if not launched():
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def broadcast(obj):
    """Rank 0's `obj` on every rank (unchanged when not distributed)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()

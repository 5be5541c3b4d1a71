"""Baselines that branch off an imp ticket (the trunk), as in OpenLTH: each changes one thing
about it."""
from __future__ import annotations

import torch

from .. import distributed, tensorfile
from ..stage_inputs import load_mask
from .run import Found, SearchRun, fresh_init


def random_mask(run: SearchRun) -> Found:
    """A random mask with the trunk ticket's number of weights in every layer, restarting from
    the same weights."""
    mask = distributed.broadcast(run.random_like(load_mask(run.trunk),
                                                 torch.Generator().manual_seed(run.seed)))
    return Found(mask, tensorfile.load(run.trunk.file("rewind.safetensors")))


def fresh_weights(run: SearchRun) -> Found:
    """The trunk ticket's mask with a fresh random initialization."""
    return Found(load_mask(run.trunk), fresh_init(run.dense, run.seed + 1),
                 metrics={"rewind_epoch": "fresh-init"})

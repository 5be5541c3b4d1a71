"""Iterative Magnitude Pruning: the sparsity schedule over rounds."""
from __future__ import annotations

from ..errors import UserError


def round_sparsities(target: float, rate: float) -> list[float]:
    """Sparsity after each round when every round prunes `rate` of the remaining weights; the
    last round lands exactly on `target` (it prunes less if a full round would overshoot)."""
    if not 0.0 < target < 1.0 or not 0.0 < rate < 1.0:
        raise UserError("sparsity and prune rate must be in (0, 1)")
    out, s = [], 0.0
    while True:
        s = 1.0 - (1.0 - s) * (1.0 - rate)
        if s >= target - 1e-9:
            out.append(target)
            return out
        out.append(s)

"""Early-Time ticket (Kim et al., 2022): score fewer timesteps T' by how far the network's
mean-over-time output distribution at T' is from the one at the full T, and search at the
smallest T' that is close enough."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def kl_scores(model: nn.Module, x: torch.Tensor, timesteps: int,
              candidates: list[int]) -> dict[int, float]:
    """KL(p_T || p_T') per candidate, p = softmax of the logits averaged over time."""
    model.eval()
    with torch.random.fork_rng():  # Poisson encoding draws random spikes; keep scoring fixed
        torch.manual_seed(0)
        p_full = F.softmax(model(x, timesteps).mean(0), dim=-1)
        out = {}
        for t in candidates:
            log_q = F.log_softmax(model(x, t).mean(0), dim=-1)
            out[t] = float(F.kl_div(log_q, p_full, reduction="batchmean"))
    return out


NOISE_FLOOR = 1e-6  # KL below this is float noise: the outputs at T' and T are the same


def normalize(scores: dict[int, float]) -> dict[int, float]:
    """Divide by the largest score, as the paper does, so lambda is scale-free. Scores are
    clamped at 0 (a KL is never negative; tiny negatives are rounding), and when even the
    largest is noise every T' counts as equal to T (0), instead of dividing noise by noise."""
    clamped = {t: max(s, 0.0) for t, s in scores.items()}
    top = max(clamped.values(), default=0.0)
    return {t: (s / top if top > NOISE_FLOOR else 0.0) for t, s in clamped.items()}


def pick(normalized: dict[int, float], timesteps: int, lam: float) -> int:
    """The smallest candidate whose normalized KL is below lambda; the full T if none is."""
    for t in sorted(normalized):
        if normalized[t] < lam:
            return t
    return timesteps


def default_candidates(timesteps: int) -> list[int]:
    """1..T-1. The paper scores 2..T-1, but dividing by the largest score means its smallest
    candidate (whose score is nearly always the largest) can never be picked; scoring T' = 1
    as well gives the scale, so T' = 2 can be chosen when it is close enough."""
    return list(range(1, timesteps))

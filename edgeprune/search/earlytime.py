"""Early-Time ticket (Kim et al., 2022): score fewer timesteps T' by how far the network's
mean-over-time output distribution at T' is from the one at the full T, and search at the
smallest T' that is close enough."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import SearchConfig
from ..trainer import Trainer
from .run import SearchRun


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


def candidates(cfg: SearchConfig, T: int) -> list[int]:
    return [t for t in (cfg.et.candidates or default_candidates(T)) if t < T]


def early_time(run: SearchRun) -> dict:
    """Pick T' on the network after `et_epochs` epochs at full T: the dense run's snapshot when
    it kept one (no extra cost), else that many epochs trained from the rewind point."""
    et, T = run.cfg.et, run.dense.spec.timesteps
    t0 = time.perf_counter()
    snap = run.dense.snapshot(et.epochs)
    if snap is not None:
        model, source = run.model_from(snap), f"dense run, epoch {et.epochs}"
    else:
        model = run.model_from(run.rewind_weights())
        if et.epochs > 0:
            trainer = Trainer(model, run.ds, T, run.cfg.train_config(et.epochs), run.seed,
                              run.run)
            for _ in range(et.epochs):
                trainer.train_epoch(run.report)
        source = f"{et.epochs} epochs at T={T} from the rewind point"
    cands = candidates(run.cfg, T)
    g = torch.Generator().manual_seed(run.seed)
    idx = torch.randperm(len(run.ds.y_train), generator=g)[:et.batch]
    scores = kl_scores(model, run.ds.x_train[idx].to(run.device), T, cands)
    norm = normalize(scores)
    chosen = pick(norm, T, et.lam)
    return distributed.broadcast(
        {"candidates": cands, "kl": scores, "normalized_kl": norm, "pick": chosen,
         "lambda": et.lam, "scored_on": source, "seconds": time.perf_counter() - t0})

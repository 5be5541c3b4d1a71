"""Crash injection for the resume tests: `EDGEPRUNE_CRASH_AT=point:n` kills the process with
SIGKILL the n-th time it passes `point` (a training step, a checkpoint write, an artifact write).
Unset, `reach` costs one dictionary lookup."""
from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("EDGEPRUNE_CRASH_AT", "")
_POINT, _, _N = _SPEC.partition(":")
_seen: dict[str, int] = {}


def reach(point: str) -> None:
    if point != _POINT:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(_N or 1):
        os.kill(os.getpid(), signal.SIGKILL)

"""What a benchmark ran on: CPU, cores, load at start, package versions, git commit."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def describe() -> dict:
    from edgeprune.artifacts import environment

    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg(), **environment()}

"""What a benchmark ran on: CPU, cores, load at start, package versions, git commit, library
edits not yet committed, torch threads."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def describe() -> dict:
    from edgeprune.artifacts import environment

    env = {"cpu": cpu_model(), "cores": os.cpu_count(),
           "load_average_at_start": os.getloadavg(), **environment()}
    for pkg in ("matplotlib", "scikit-learn"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    try:  # library edits not yet committed: a result must say what code made it
        env["edgeprune_uncommitted"] = subprocess.run(
            ["git", "status", "--porcelain", "--", "edgeprune", "export", "targets"], cwd=ROOT,
            capture_output=True, text=True, timeout=10).stdout.split("\n")[:-1]
    except (OSError, subprocess.SubprocessError):
        env["edgeprune_uncommitted"] = None
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    return env

"""Run an ONNX model on one target with ONNX Runtime: the torch-free runner.py does the work in
a fresh process, started by the target's platform (targets/platforms.py): natively, under QEMU
(aarch64 on an x86-64 host), or on a board over SSH. The paths differ only in where that process
runs."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import registry
from .platforms import Platform
from .profiles import Profile
from .tools import host_isa  # noqa: F401  (re-exported: targets.runtime.host_isa)

RUNNER = Path(__file__).with_name("runner.py")


@dataclass
class TargetRun:
    outputs: np.ndarray  # logits for every input fed, (N, classes)
    result: dict  # runner's result.json: latencies, RSS, versions
    mode: str  # native | emulated | remote
    command: str  # how the runner was started, for the report


def run(model: Path, profile: Profile, inputs: np.ndarray, *, platform: Platform | None = None,
        progress: Callable[[str], None] = lambda m: None,
        scratch: Path | None = None) -> TargetRun:
    """Feed `inputs` to `model` on `profile`'s target (on `platform`, default: the registry's
    for the profile); time `runs` batches after `warmup`. The runner's job folder goes under
    `scratch` (default: the system temp dir)."""
    pf = platform or registry.platform_for(profile)
    plan = pf.plan(profile)
    job_dir = Path(tempfile.mkdtemp(prefix="edgeprune-run-", dir=scratch))
    try:
        np.save(job_dir / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.float32))
        job = {"provider": profile.runtime.provider,
               "graph_optimization_level": profile.runtime.graph_optimization_level,
               "intra_op_threads": profile.runtime.intra_op_threads,
               "latency_batch": profile.latency.batch_size, "warmup": plan.warmup,
               "runs": plan.runs, "infer_batch": 64}
        progress(f"{profile.name}: running {inputs.shape[1 if inputs.ndim == 5 else 0]} inputs"
                 f" + {plan.warmup}+{plan.runs} timed batches ({pf.mode})")
        with pf.session():
            p, command = pf.run_script(RUNNER, job_dir, {"model": Path(model)}, job,
                                       f"target {profile.name}", progress,
                                       needs=("numpy", "onnxruntime"))
        result_path = job_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        if p.returncode != 0 or "error" in result:
            why = result.get("error") or _describe_exit(p)
            raise UserError(f"target {profile.name}: the model did not run ({pf.mode}): {why}")
        return TargetRun(np.load(job_dir / "outputs.npy"), result, pf.mode, command)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _describe_exit(p: subprocess.CompletedProcess) -> str:
    if p.returncode < 0:
        return f"the runner was killed by signal {-p.returncode}"
    lines = [l for l in (p.stderr or "").strip().splitlines() if l.strip()]
    return f"exit {p.returncode}: {lines[-1][:240] if lines else 'no output'}"

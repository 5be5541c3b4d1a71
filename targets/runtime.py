"""Run a model on one target: natively when the host has the target's ISA, else (aarch64 on an
x86-64 host) under QEMU. Either way the same torch-free runner.py does the work in a fresh
process, so the two paths differ only in how that process is started."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import child, emulation, tools
from .profiles import Profile
from .tools import host_isa

RUNNER = Path(__file__).with_name("runner.py")
NATIVE_TIMEOUT_S = 900
EMULATED_TIMEOUT_S = 1800


def mode(profile: Profile) -> str:
    """"native" or "emulated"; a UserError when this host cannot run the target at all."""
    how = tools.mode(profile.isa)
    if how is not None:
        return how
    host = host_isa()
    raise UserError(f"target {profile.name} ({profile.isa}) cannot run on this {host} host: "
                    f"validate it on a {profile.isa} machine")


@dataclass
class TargetRun:
    outputs: np.ndarray  # logits for every input fed, (N, classes)
    result: dict  # runner's result.json: latencies, RSS, versions
    mode: str  # native | emulated
    command: str  # how the runner was started, for the report


def run(model: Path, profile: Profile, inputs: np.ndarray, *, emulator: emulation.Emulator | None
        = None, progress: Callable[[str], None] = lambda m: None,
        scratch: Path | None = None) -> TargetRun:
    """Feed `inputs` to `model` on `profile`'s target; time `runs` batches after `warmup`.
    The runner's job folder goes under `scratch` (default: the system temp dir)."""
    how = mode(profile)
    emulated = how == "emulated"
    warmup, runs = ((profile.emulation.warmup, profile.emulation.runs) if emulated
                    else (profile.latency.warmup, profile.latency.runs))
    job_dir = Path(tempfile.mkdtemp(prefix="edgeprune-run-", dir=scratch))
    try:
        np.save(job_dir / "inputs.npy", np.ascontiguousarray(inputs, dtype=np.float32))
        (job_dir / "job.json").write_text(json.dumps({
            "model": str(Path(model).resolve()), "provider": profile.runtime.provider,
            "graph_optimization_level": profile.runtime.graph_optimization_level,
            "intra_op_threads": profile.runtime.intra_op_threads,
            "latency_batch": profile.latency.batch_size, "warmup": warmup, "runs": runs,
            "infer_batch": 64}))
        args = [str(RUNNER), str(job_dir)]
        if emulated:
            emu = emulator or emulation.setup(progress)
            core = profile.emulation.qemu_cpu
            emulation.check_core(core, emu.qemu)
            argv, env = emu.command(core, args)
            command = f"qemu-aarch64 -cpu {core} (onnxruntime {emu.onnxruntime} aarch64)"
            timeout = EMULATED_TIMEOUT_S
        else:
            # -I: no user site, no PYTHON* variables, no cwd on sys.path: only the installed
            # numpy/onnxruntime, as on a device.
            argv, env, command, timeout = [sys.executable, "-I", *args], None, "native", NATIVE_TIMEOUT_S
        progress(f"{profile.name}: running {inputs.shape[1 if inputs.ndim == 5 else 0]} inputs"
                 f" + {warmup}+{runs} timed batches ({how})")
        try:
            p = child.run(argv, env=env, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"target {profile.name}: the {how} run took over {timeout} s; "
                            "lower the profile's runs or max_inputs") from None
        result_path = job_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        if p.returncode != 0 or "error" in result:
            why = result.get("error") or _describe_exit(p)
            raise UserError(f"target {profile.name}: the model did not run ({how}): {why}")
        return TargetRun(np.load(job_dir / "outputs.npy"), result, how, command)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _describe_exit(p: subprocess.CompletedProcess) -> str:
    if p.returncode < 0:
        return f"the runner was killed by signal {-p.returncode}"
    lines = [l for l in (p.stderr or "").strip().splitlines() if l.strip()]
    return f"exit {p.returncode}: {lines[-1][:240] if lines else 'no output'}"

"""Runtimes: what executes a model on a target, and what it needs. Torch-free.

    OnnxRuntime  the exported model.onnx (and its int8 and .ort variants) in ONNX Runtime,
                 through targets/runner.py in a fresh Python process
    CRuntime     the generated event-driven C runtime (c_build.FILES), compiled for the
                 platform and run through its standalone runner

A runtime knows its files (what it needs from the export, what a validation keeps and a bundle
ships), the tools and Python packages this host needs for it, how to run a model on a platform
(targets/platforms.py) and what its deployable bytes are (the run's result: `deploy_bytes`).
targets/registry.py lists them by the name a profile's `runtime.kind` gives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import c_build, c_run, c_target, runtime, tools
from .modelfile import ModelInfo
from .platforms import Platform
from .profiles import Profile

Progress = Callable[[str], None]
INT8_FILE = "model.int8.onnx"  # the int8-weight model an export may add
ORT_PLATFORM = {"x86_64": "amd64", "aarch64": "arm"}  # ORT format conversion's --target_platform


class Runtime:
    name = ""
    export_files: tuple[str, ...] = ()  # the export artifact's files it runs (bundle: c/)
    binaries: tuple[str, ...] = ()  # what a validation keeps per target (bundle: c/<target>/)
    native_code = False  # runs code that comes in a bundle: only when its signature is trusted
    runs_onnx = False  # runs the ONNX files (so also the int8 model and the .ort conversions)
    packages: tuple[str, ...] = ()  # the Python packages this host needs for it
    # Runs under an emulator with nothing but the emulator (a static executable); ONNX Runtime
    # needs an emulated Python, built on first use, so a bundle check only runs it when named.
    self_contained = False

    def tools(self, platform: Platform) -> list[tools.Tool]:
        """The tools this host needs for it on `platform` (the platform adds its own)."""
        return []

    def check_host(self, platform: Platform) -> None:
        """A UserError naming the package when one of its tools is missing here."""

    def model(self, profile: Profile, onnx: ModelInfo | None, c_sources: Path | None,
              what: str) -> Path:
        """What it runs of an export: the ONNX file, or the C sources' folder."""
        raise NotImplementedError

    def run(self, model: Path, profile: Profile, platform: Platform, inputs: np.ndarray, *,
            keep: Path | None = None, progress: Progress = lambda m: None,
            scratch: Path | None = None) -> runtime.TargetRun:
        raise NotImplementedError

    def setup_seconds(self, platform: Platform) -> float:
        """Seconds spent preparing the platform for it in this run (the emulated Python)."""
        return 0.0

    def bundled(self, profile: Profile, members: set[str], rebuild: bool) -> list[str]:
        """The bundle members verify runs on `profile` (the first is timed); a UserError
        naming what is missing."""
        raise NotImplementedError

    def run_bundled(self, root: Path, member: str, profile: Profile, platform: Platform,
                    inputs: np.ndarray, rebuild: bool, progress: Progress) -> runtime.TargetRun:
        raise NotImplementedError


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    runs_onnx = True
    packages = ("onnxruntime",)

    def model(self, profile, onnx, c_sources, what):
        if onnx is None:
            raise UserError(f"target {profile.name} runs ONNX Runtime, but there is no ONNX "
                            f"{what}")
        return onnx.path

    def run(self, model, profile, platform, inputs, *, keep=None, progress=lambda m: None,
            scratch=None):
        return runtime.run(model, profile, inputs, platform=platform, progress=progress,
                           scratch=scratch)

    def setup_seconds(self, platform):
        return platform.setup_seconds

    def bundled(self, profile, members, rebuild):
        return ["model.onnx"] + [n for n in sorted(members)
                                 if n in (f"model.{ORT_PLATFORM[profile.isa]}.ort", INT8_FILE)]

    def run_bundled(self, root, member, profile, platform, inputs, rebuild, progress):
        return runtime.run(root / member, profile, inputs, platform=platform,
                           progress=progress, scratch=root)


class CRuntime(Runtime):
    name = "c"
    export_files = c_build.FILES
    binaries = c_build.BINARIES
    native_code = True
    self_contained = True
    REBUILT = "c/model.c (rebuilt here)"

    def tools(self, platform):
        tool = platform.compiler()
        if tool is None:
            raise UserError(f"cannot build the C runtime for {platform.isa} on this "
                            f"{tools.host_isa()} host (supported: {', '.join(tools.ISAS)}; "
                            "aarch64 cross-builds from x86_64)")
        return [tool]

    def check_host(self, platform):
        self.tools(platform)  # an ISA this host cannot build for at all
        c_build.find_tools(platform.isa)

    def model(self, profile, onnx, c_sources, what):
        if c_sources is None:
            raise UserError(f"target {profile.name} runs the C runtime, but the {what} was "
                            "exported without it (export with --c-runtime; models with "
                            "residual blocks or poisson encoding cannot be expressed in C)")
        return c_sources

    def run(self, model, profile, platform, inputs, *, keep=None, progress=lambda m: None,
            scratch=None):
        return c_target.run(model, profile, inputs, keep=keep, progress=progress,
                            scratch=scratch, platform=platform)

    def bundled(self, profile, members, rebuild):
        if rebuild:
            if not all(f"c/{n}" in members for n in self.export_files):
                raise UserError(f"target {profile.name}: the bundle has no C sources to rebuild")
            return [self.REBUILT]
        runner = f"c/{profile.name}/{self.binaries[0]}"
        if runner not in members:
            raise UserError(f"target {profile.name}: the bundle has no C runner for it "
                            "(validate and package with this target)")
        return [runner]

    def run_bundled(self, root, member, profile, platform, inputs, rebuild, progress):
        if rebuild:
            return c_target.run(root / "c", profile, inputs, progress=progress, scratch=root,
                                platform=platform)
        # the bundle's runner: only for a bundle whose signature was verified
        runner = root / member
        runner.chmod(0o755)
        build = c_build.CBuild(folder=runner.parent, isa=profile.isa,
                               native=platform.mode == "native", sanitize=False, compiler="",
                               flags=(), runner=runner, library=runner.parent / "libmodel.a",
                               objects=(), static=platform.static)
        plan = platform.plan(profile)
        with platform.session():
            out = c_run.run(build, inputs, bench=(plan.runs, plan.warmup), platform=platform)
        return runtime.TargetRun(out.logits, {"onnxruntime": None, "machine": profile.isa,
                                              "latencies_ms": out.latencies_ms}, out.mode,
                                 " ".join(out.command))

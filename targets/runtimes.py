"""Runtimes: what executes a model on a target, and what it needs. Torch-free.

    OnnxRuntime  the exported model.onnx (and its int8 and .ort variants) in ONNX Runtime,
                 through targets/runner.py in a fresh Python process
    CRuntime     the generated event-driven C runtime (c_build.FILES), compiled for the
                 platform and run as the program its `c_program` names: the standalone runner
                 (targets/c_target.py) or bare-metal firmware on a board (targets/mcu_target.py)

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

from . import c_build, c_target, mcu_build, mcu_target, runtime, tools
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
    # The C programs a platform can ask for (its `c_program`), each a module with the same
    # interface: BINARIES (kept by a validation, shipped under c/<target>/; the first is the
    # program itself), run(...) from the sources, run_binary(...) of a bundle's binary.
    PROGRAMS = {"runner": c_target, "firmware": mcu_target}
    # (read from the build modules: c_target and mcu_target may still be importing here)
    binaries = tuple(dict.fromkeys((*c_build.BINARIES, *mcu_build.BINARIES)))
    native_code = True
    self_contained = True
    REBUILT = "c/model.c (rebuilt here)"

    def tools(self, platform):
        tool = platform.compiler()
        if tool is None:
            raise UserError(f"cannot build the C runtime for {platform.isa} on this "
                            f"{tools.host_isa()} host (supported: {', '.join(tools.LINUX_ISAS)}; "
                            "aarch64 cross-builds from x86_64)")
        return [tool]

    def check_host(self, platform):
        self.tools(platform)  # an ISA this host cannot build for at all
        platform.check_c_build()

    def model(self, profile, onnx, c_sources, what):
        if c_sources is None:
            raise UserError(f"target {profile.name} runs the C runtime, but the {what} was "
                            "exported without it (export with --c-runtime; models with "
                            "residual blocks or poisson encoding cannot be expressed in C)")
        return c_sources

    def run(self, model, profile, platform, inputs, *, keep=None, progress=lambda m: None,
            scratch=None):
        return self.PROGRAMS[platform.c_program].run(model, profile, inputs, keep=keep,
                                                     progress=progress, scratch=scratch,
                                                     platform=platform)

    def bundled(self, profile, members, rebuild):
        if rebuild:
            if not all(f"c/{n}" in members for n in self.export_files):
                raise UserError(f"target {profile.name}: the bundle has no C sources to rebuild")
            return [self.REBUILT]
        for program in self.PROGRAMS.values():
            member = f"c/{profile.name}/{program.BINARIES[0]}"
            if member in members:
                return [member]
        raise UserError(f"target {profile.name}: the bundle has no C runner for it "
                        "(validate and package with this target)")

    def run_bundled(self, root, member, profile, platform, inputs, rebuild, progress):
        program = self.PROGRAMS[platform.c_program]
        if rebuild:
            return program.run(root / "c", profile, inputs, progress=progress, scratch=root,
                               platform=platform)
        # the bundle's binary: only for a bundle whose signature was verified
        return program.run_binary(root / member, profile, inputs, platform=platform)

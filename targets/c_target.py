"""A target profile of kind "c": build the generated C sources for the profile's ISA and run
them through the standalone runner, giving what validation needs from any target (logits for
every input, per-run latencies, size). Torch-free (stdlib + numpy), like all of targets/.

The sources are the export artifact's `model.h`, `model.c`, `model_weights.c`, `runner.c`
(export/c_codegen.py); they are copied (sha256 checked by the caller) into a scratch folder, so
nothing is ever written into an artifact. With `keep`, the compiled `libmodel.a` and `runner`
are copied there: the binaries that were validated are the ones a bundle ships. Natively, a
second build with -DMODEL_PROFILE times each layer (targets/c_profile.py: "layer_profile").
"""
from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import c_build, c_profile, c_run, runtime
from .profiles import Profile

SOURCES = ("model.h", "model.c", "model_weights.c", "runner.c")
STATIC_METHOD = ("static: the context struct (activations and neuron state) plus the loaded "
                 "sections of the model's objects; the runtime allocates nothing")


def has_sources(folder: Path) -> bool:
    return all((Path(folder) / n).is_file() for n in SOURCES)


def run(src: Path, profile: Profile, inputs: np.ndarray, *, keep: Path | None = None,
        progress: Callable[[str], None] = lambda m: None,
        scratch: Path | None = None) -> runtime.TargetRun:
    """Build `src` for `profile` and run `inputs` (N, C, H, W) through its runner. The build
    folder goes under `scratch` (default: the system temp dir)."""
    how = runtime.mode(profile)
    if inputs.ndim != 4:
        raise UserError(f"target {profile.name}: the C runtime takes images (N, C, H, W), got "
                        f"an input of shape {list(inputs.shape)}")
    emulated = how == "emulated"
    warmup, runs = ((profile.emulation.warmup, profile.emulation.runs) if emulated
                    else (profile.latency.warmup, profile.latency.runs))
    qemu_cpu = profile.emulation.qemu_cpu if profile.emulation else "cortex-a72"
    with tempfile.TemporaryDirectory(prefix="edgeprune-c-", dir=scratch) as d:
        work = Path(d) / "src"
        work.mkdir()
        for name in SOURCES:
            shutil.copyfile(Path(src) / name, work / name)
        progress(f"{profile.name}: compiling the C runtime for {profile.isa}")
        how_built = dict(isa=profile.isa, mcpu=profile.runtime.mcpu or None,
                         extra_flags=((f"-march={profile.runtime.march}",)
                                      if profile.runtime.march else ()))
        build = c_build.build(work, Path(d) / "build", **how_built)
        info = c_run.info(build, qemu_cpu=qemu_cpu)
        progress(f"{profile.name}: running {len(inputs)} inputs + {warmup}+{runs} timed runs "
                 f"({how})")
        out = c_run.run(build, inputs, bench=(runs, warmup), qemu_cpu=qemu_cpu, model_info=info)
        layer_profile = None
        if not emulated:  # emulated times say nothing about the device's layers
            progress(f"{profile.name}: timing each layer (profiling build)")
            layer_profile = c_profile.measure(
                work, Path(d) / "profile", inputs[:100], runs=runs, warmup=warmup, **how_built)
        objects = sum(s["total"] for s in build.sizes.values())
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(build.runner, keep / "runner")
            shutil.copyfile(build.library, keep / "libmodel.a")
        result = {"latencies_ms": out.latencies_ms, "session_load_ms": None,
                  "static_bytes": objects + int(info["context_bytes"]),
                  "deploy_bytes": objects, "object_sizes": build.sizes,
                  "context_bytes": int(info["context_bytes"]),
                  "weight_bytes": int(info["weight_bytes"]),
                  "compiler": Path(build.compiler).name, "flags": list(build.flags),
                  "static_link": build.static, "onnxruntime": None,
                  "machine": profile.isa if emulated else platform.machine(),
                  "python": platform.python_version(),
                  "providers": [f"c ({Path(build.compiler).name})"],
                  "layer_profile": layer_profile}
        command = (f"qemu-aarch64 -cpu {qemu_cpu} runner" if emulated else "runner") + \
            f" ({Path(build.compiler).name} {' '.join(build.flags)})"
        return runtime.TargetRun(out.logits, result, how, command)

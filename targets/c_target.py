"""A target profile of kind "c": build the generated C sources for the profile's platform and
run them through the standalone runner, giving what validation needs from any target (logits for
every input, per-run latencies, size). Torch-free (stdlib + numpy), like all of targets/.

The sources are the export artifact's c_build.FILES (`model.h`, `model.c`, `model_weights.c`,
`runner.c`, from export/c_codegen.py); they are copied (sha256 checked by the caller) into a
scratch folder, so nothing is ever written into an artifact. With `keep`, the compiled
c_build.BINARIES (`runner`, `libmodel.a`) are copied there: the binaries that were validated are
the ones a bundle ships. Natively, a second build with -DMODEL_PROFILE times each layer
(targets/c_profile.py: "layer_profile").
"""
from __future__ import annotations

import platform as host
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import c_build, c_profile, c_run, registry, runtime
from .platforms import Platform
from .profiles import Profile

STATIC_METHOD = ("static: the context struct (activations and neuron state) plus the loaded "
                 "sections of the model's objects; the runtime allocates nothing")


BINARIES = c_build.BINARIES  # the runner first (what verify runs), then libmodel.a


def run_binary(runner: Path, profile: Profile, inputs: np.ndarray, *,
               platform: Platform) -> runtime.TargetRun:
    """A prebuilt runner (a bundle's) on `platform`, timed with the profile's plan."""
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


def has_sources(folder: Path) -> bool:
    return all((Path(folder) / n).is_file() for n in c_build.FILES)


def run(src: Path, profile: Profile, inputs: np.ndarray, *, keep: Path | None = None,
        progress: Callable[[str], None] = lambda m: None, scratch: Path | None = None,
        platform: Platform | None = None) -> runtime.TargetRun:
    """Build `src` for `profile` and run `inputs` (N, C, H, W) through its runner on
    `platform` (default: the registry's for the profile). The build folder goes under
    `scratch` (default: the system temp dir)."""
    pf = platform or registry.platform_for(profile)
    if inputs.ndim != 4:
        raise UserError(f"target {profile.name}: the C runtime takes images (N, C, H, W), got "
                        f"an input of shape {list(inputs.shape)}")
    plan = pf.plan(profile)
    with tempfile.TemporaryDirectory(prefix="edgeprune-c-", dir=scratch) as d:
        work = Path(d) / "src"
        work.mkdir()
        for name in c_build.FILES:
            shutil.copyfile(Path(src) / name, work / name)
        progress(f"{profile.name}: compiling the C runtime for {profile.isa}")
        build = pf.build_c(work, Path(d) / "build", profile)
        with pf.session():
            info = c_run.info(build, platform=pf)
            progress(f"{profile.name}: running {len(inputs)} inputs + {plan.warmup}+{plan.runs} "
                     f"timed runs ({pf.mode})")
            out = c_run.run(build, inputs, bench=(plan.runs, plan.warmup), model_info=info,
                            platform=pf)
        layer_profile = None
        if pf.mode == "native":  # emulated or remote times say nothing about this build's layers
            progress(f"{profile.name}: timing each layer (profiling build)")
            profiled = pf.build_c(work, Path(d) / "profile", profile, extra_flags=(c_profile.FLAG,))
            layer_profile = c_profile.measure(profiled, inputs[:100], runs=plan.runs,
                                              warmup=plan.warmup)
        objects = sum(s["total"] for s in build.sizes.values())
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f, path in zip(c_build.BINARIES, (build.runner, build.library)):
                shutil.copyfile(path, keep / f)
        result = {"latencies_ms": out.latencies_ms, "session_load_ms": None,
                  "static_bytes": objects + int(info["context_bytes"]),
                  "deploy_bytes": objects, "object_sizes": build.sizes,
                  "context_bytes": int(info["context_bytes"]),
                  "weight_bytes": int(info["weight_bytes"]),
                  "compiler": Path(build.compiler).name, "flags": list(build.flags),
                  "static_link": build.static, "onnxruntime": None,
                  "machine": profile.isa if pf.mode != "native" else host.machine(),
                  "python": host.python_version(),
                  "providers": [f"c ({Path(build.compiler).name})"],
                  "layer_profile": layer_profile}
        return runtime.TargetRun(out.logits, result, pf.mode, pf.c_command(build))

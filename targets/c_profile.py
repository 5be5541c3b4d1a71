"""Time per layer of the generated C runtime: a second build of the same sources with
-DMODEL_PROFILE, whose model calls the runner's clock after every layer (model.c itself reads
no clock; export/c_codegen.py), run over the validation inputs. Torch-free.

    measure(src, build_dir, images, *, runs, warmup, isa, ...) -> dict
    markdown(profile) -> list[str]

The profile's per-layer milliseconds are medians over the timed runs of the time per inference
(all T steps of a body layer summed): a shared machine preempts some runs, and a mean would
charge those to whichever layer was running. "share" is each layer's part of their sum; the
total is the median of the runs' totals. Each layer's time is taken net of its clock reads
(one per layer and step; the runner measures what one costs). Under emulation the times mean nothing for the device, so no profile
is taken there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import c_build, c_run

FLAG = "-DMODEL_PROFILE"
MAX_RUNS = 300  # enough for stable means; the plain build's latency has its own runs


def build(src: Path, build_dir: Path, extra_flags: tuple[str, ...] = ()) -> c_build.CBuild:
    """A native profiling build of the sources in `src` (the hook defined: FLAG)."""
    return c_build.build(src, build_dir, extra_flags=(*extra_flags, FLAG))


def measure(build: c_build.CBuild, images: np.ndarray, *, runs: int, warmup: int) -> dict:
    """Time each layer of a profiling `build` (compiled with FLAG) on `images`."""
    raw = c_run.layer_times(build, images, min(int(runs), MAX_RUNS), int(warmup))
    per_run = np.array([l["ms"] for l in raw["layers"]], dtype=np.float64)  # (layers, runs)
    # a layer's time includes the marks (clock reads) that closed it: once per inference in
    # the stem, T times in the body, 1 + T for "other" (normalization, then each readout)
    T, parts = raw["timesteps"], [l["name"].split(".")[0] for l in raw["layers"]]
    marks = np.array([1 if part == "stem" else T for part in parts[:-1]] + [1 + T], np.float64)
    medians = np.maximum(np.median(per_run, axis=1) - marks * raw["mark_ms"], 0.0)
    parts = float(medians.sum()) or 1.0
    layers = [{"name": l["name"], "kind": l["kind"], "ms": float(m), "share": float(m) / parts}
              for l, m in zip(raw["layers"], medians)]
    return {"runs": raw["runs"], "warmup": raw["warmup"], "timesteps": raw["timesteps"],
            "clock": raw["clock"], "flags": list(build.flags), "statistic": "median",
            "mark_ms": raw["mark_ms"], "layers": layers,
            "total_ms": float(np.median(per_run.sum(0))) - float(marks.sum()) * raw["mark_ms"]}


def markdown(profile: dict | None, title: str) -> list[str]:
    """The profile as a table (nothing when there is none)."""
    if not profile:
        return []
    lines = ["", f"### {title}: time per layer (C runtime, profiling build)", "",
             f"Median over {profile['runs']} runs of the time per inference (T = "
             f"{profile['timesteps']}; a body layer's time is summed over its steps), built "
             f"with `{FLAG}`; median total {profile['total_ms']:.4f} ms, net of the clock reads "
             f"({profile['mark_ms'] * 1e6:.0f} ns each). \"other\": state reset, normalization, "
             "readout.", "",
             "| layer | kind | ms | share |", "|---|---|---:|---:|"]
    lines += [f"| {l['name']} | {l['kind']} | {l['ms']:.4f} | {l['share']:.1%} |"
              for l in profile["layers"]]
    return lines

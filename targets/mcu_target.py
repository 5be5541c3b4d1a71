"""The C runtime on a Cortex-M board: build the export's C sources bare-metal
(targets/mcu_build.py), run the inputs on the emulated board (targets/mcu_run.py) and give what
validation needs from any target (logits, per-inference latencies, sizes), plus the firmware's
flash and RAM from its ELF and the flash/RAM gates over them. Torch-free (stdlib + numpy).

Flash and RAM are exact (section sizes of the very image that ran), so their budgets are gated
even though the board is emulated; latency is not the device's and is not gated.
"""
from __future__ import annotations

import platform as host
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.errors import UserError

from . import mcu_build, mcu_run, runtime
from .boards import Board

SOURCES = ("model.h", "model.c", "model_weights.c")  # the harness replaces runner.c
BINARIES = ("model.elf", "libmodel.a")  # what a validation keeps and a bundle ships
PASS, FAIL = "pass", "fail"
KB = 1024


def run(src: Path, board: Board, inputs: np.ndarray, *, name: str,
        stack_bytes: int = mcu_build.STACK_BYTES, keep: Path | None = None,
        progress: Callable[[str], None] = lambda m: None,
        scratch: Path | None = None) -> runtime.TargetRun:
    """Build `src` for `board` and run `inputs` (N, C, H, W) on it; `name`: the target's, for
    messages. With `keep`, the firmware image and the static library are copied there."""
    if inputs.ndim != 4:
        raise UserError(f"target {name}: the C runtime takes images (N, C, H, W), got an input "
                        f"of shape {list(inputs.shape)}")
    with tempfile.TemporaryDirectory(prefix="edgeprune-mcu-", dir=scratch) as d:
        work = Path(d) / "src"
        work.mkdir()
        for f in SOURCES:
            shutil.copyfile(Path(src) / f, work / f)
        progress(f"{name}: compiling the C runtime bare-metal for {board.machine} ({board.cpu})")
        build = mcu_build.build(work, Path(d) / "build", board, stack_bytes=stack_bytes)
        progress(f"{name}: running {len(inputs)} inputs on {board.machine} (qemu-system-arm)")
        out = mcu_run.run(build.elf, board, inputs, scratch=Path(d))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f, path in zip(BINARIES, (build.elf, build.library)):
                shutil.copyfile(path, keep / f)
        return runtime.TargetRun(out.logits, result_of(build, out), "emulated",
                                 " ".join(Path(a).name if i == 0 else a
                                          for i, a in enumerate(out.command)))


def result_of(build: mcu_build.McuBuild, out: mcu_run.McuRun) -> dict:
    """The run's result in the shape validation reads from every target."""
    objects = sum(s["total"] for s in build.sizes.values())
    fp = mcu_build.footprint(build.elf)
    n = np.asarray(out.instructions, dtype=np.float64)
    return {"latencies_ms": out.latencies_ms, "session_load_ms": None,
            "latency_note": out.latency_note,
            "static_bytes": fp["ram_bytes"], "deploy_bytes": objects,
            "object_sizes": build.sizes, "context_bytes": int(out.info["context_bytes"]),
            "weight_bytes": int(out.info["weight_bytes"]),
            "compiler": Path(build.compiler).name, "flags": list(build.flags),
            "static_link": True, "onnxruntime": None,
            "machine": f"{build.board.machine} ({build.board.cpu}, emulated)",
            "python": host.python_version(),
            "providers": [f"c ({Path(build.compiler).name}, bare-metal)"],
            "footprint": {**fp, "stack_peak_bytes": int(out.info["stack_peak_bytes"])},
            "icount_instructions": {
                "note": "instructions QEMU executed per inference (-icount shift=0, to +-40): "
                        "not cycles",
                "p50": float(np.percentile(n, 50)), "p95": float(np.percentile(n, 95)),
                "max": float(n.max()), "inferences": int(n.size)}}


def footprint_gates(fp: dict, flash_kb: float, ram_kb: float) -> list[dict]:
    """The flash and RAM gates of a firmware footprint (mcu_build.footprint) against budgets
    in KB (1 KB = 1024 bytes; 0: not gated)."""
    gates = []
    for what, used, budget in (("flash", fp["flash_bytes"], flash_kb),
                               ("ram", fp["ram_bytes"], ram_kb)):
        parts = ("text + rodata + data" if what == "flash"
                 else f"data + bss + {fp['stack_bytes']:,} B stack")
        if budget <= 0:
            gates.append({"gate": what, "status": "skipped",
                          "detail": f"{what} {used / KB:.1f} KB ({used:,} B: {parts}); no "
                                    "budget set"})
            continue
        ok = used <= budget * KB
        gates.append({"gate": what, "status": PASS if ok else FAIL,
                      "detail": f"{what} {used / KB:.1f} KB {'<=' if ok else '>'} budget "
                                f"{budget:g} KB ({used:,} B vs {int(budget * KB):,} B; {parts})"})
    return gates

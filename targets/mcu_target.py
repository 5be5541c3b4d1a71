"""The C runtime on a Cortex-M board: build the export's C sources bare-metal
(targets/mcu_build.py), run the inputs on the emulated board (targets/mcu_run.py) and give what
validation needs from any target (logits, per-inference latencies, sizes), plus the firmware's
flash and RAM from its ELF (targets/validation.py gates them). Torch-free (stdlib + numpy).

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
from .profiles import Profile

SOURCES = ("model.h", "model.c", "model_weights.c")  # the harness replaces runner.c
BINARIES = mcu_build.BINARIES  # the firmware image first (what verify runs), then libmodel.a
FOOTPRINT_METHOD = ("the firmware image's ELF sections: flash = text + rodata + data (its "
                    "initial values), RAM = data + bss + the stack reserve")


def run(src: Path, profile: Profile, inputs: np.ndarray, *, platform,
        keep: Path | None = None, progress: Callable[[str], None] = lambda m: None,
        scratch: Path | None = None) -> runtime.TargetRun:
    """Build `src` for the platform's board (a platforms.QemuSystem) and run `inputs`
    (N, C, H, W) on it. With `keep`, the firmware image and the static library are copied
    there."""
    board = platform.board
    if inputs.ndim != 4:
        raise UserError(f"target {profile.name}: the C runtime takes images (N, C, H, W), got "
                        f"an input of shape {list(inputs.shape)}")
    with tempfile.TemporaryDirectory(prefix="edgeprune-mcu-", dir=scratch) as d:
        work = Path(d) / "src"
        work.mkdir()
        for f in SOURCES:
            shutil.copyfile(Path(src) / f, work / f)
        progress(f"{profile.name}: compiling the C runtime bare-metal for {board.machine} "
                 f"({board.cpu})")
        build = mcu_build.build(work, Path(d) / "build", board, stack_bytes=platform.stack_bytes)
        progress(f"{profile.name}: running {len(inputs)} inputs on {board.machine} "
                 "(qemu-system-arm)")
        out = mcu_run.run(build.elf, board, inputs, scratch=Path(d))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f, path in zip(BINARIES, (build.elf, build.library)):
                shutil.copyfile(path, keep / f)
        return runtime.TargetRun(out.logits, result_of(build, out), "emulated",
                                 _command(out.command, build))


def run_binary(image: Path, profile: Profile, inputs: np.ndarray, *,
               platform) -> runtime.TargetRun:
    """A prebuilt firmware image (a bundle's) on the platform's board; its flash and RAM are
    read from the image itself."""
    out = mcu_run.run(image, platform.board, inputs, scratch=Path(image).parent)
    result = {"onnxruntime": None, "machine": _machine(platform.board),
              "latencies_ms": out.latencies_ms, "latency_note": out.latency_note,
              "footprint": {**mcu_build.footprint(image),
                            "stack_peak_bytes": int(out.info["stack_peak_bytes"])},
              "icount_instructions": _icount(out)}
    return runtime.TargetRun(out.logits, result, "emulated", _command(out.command))


def _command(argv: list[str], build: mcu_build.McuBuild | None = None) -> str:
    text = " ".join([Path(argv[0]).name, *argv[1:-1], Path(argv[-1]).name])
    return text + (f" ({Path(build.compiler).name} {' '.join(build.flags)})" if build else "")


def _machine(board: Board) -> str:
    return f"{board.machine} ({board.cpu}, emulated)"


def _icount(out: mcu_run.McuRun) -> dict:
    n = np.asarray(out.instructions, dtype=np.float64)
    return {"note": "instructions QEMU executed per inference (-icount shift=0, to +-40): "
                    "not cycles",
            "p50": float(np.percentile(n, 50)), "p95": float(np.percentile(n, 95)),
            "max": float(n.max()), "inferences": int(n.size)}


def result_of(build: mcu_build.McuBuild, out: mcu_run.McuRun) -> dict:
    """The run's result in the shape validation reads from every target."""
    objects = sum(s["total"] for s in build.sizes.values())
    fp = mcu_build.footprint(build.elf)
    return {"latencies_ms": out.latencies_ms, "session_load_ms": None,
            "latency_note": out.latency_note,
            "static_bytes": fp["ram_bytes"], "deploy_bytes": objects,
            "object_sizes": build.sizes, "context_bytes": int(out.info["context_bytes"]),
            "weight_bytes": int(out.info["weight_bytes"]),
            "compiler": Path(build.compiler).name, "flags": list(build.flags),
            "static_link": True, "onnxruntime": None, "machine": _machine(build.board),
            "python": host.python_version(),
            "providers": [f"c ({Path(build.compiler).name}, bare-metal)"],
            "footprint": {**fp, "stack_peak_bytes": int(out.info["stack_peak_bytes"])},
            "icount_instructions": _icount(out)}

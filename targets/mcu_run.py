"""Run a Cortex-M firmware image (targets/mcu_build.py) on its board under QEMU system
emulation with semihosting: images in, logits and per-inference SysTick ticks out. Torch-free
(stdlib + numpy).

    run(image, board, images) -> McuRun

QEMU runs with `-icount shift=0`: its virtual clock advances 1 ns per guest instruction, so
SysTick (the board's 25 MHz SYSCLK under QEMU) ticks once per 40 instructions, the same on every
host. Instructions per inference (to +-1 tick) are reported as such; they are not cycles (QEMU
models no pipeline, caches or wait states), and the latency derived from them is not
indicative of the device.
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import UserError

from . import child, tools
from .boards import Board
from .mcu_build import require

TIMEOUT_S = 900
ICOUNT_SHIFT = 0  # 2**0 ns of virtual time per instruction
NOTE = ("emulated (qemu-system-arm {machine}, -icount shift=0): latency is not indicative of "
        "the device; icount_instructions counts the instructions QEMU executed per inference")
EXIT_REASONS = {2: "bad input", 3: "a fault", 4: "the stack outgrew its reserve"}


@dataclass
class McuRun:
    logits: np.ndarray  # (N, classes) float32
    instructions: list[int]  # per inference: QEMU -icount instruction counts (+-1 SysTick tick)
    latencies_ms: list[float]  # per inference, QEMU virtual time (not indicative)
    info: dict  # the harness's info.json: model sizes, images, stack reserve and peak
    command: list[str]
    latency_note: str


def find_qemu() -> str:
    return require(tools.QEMU_SYSTEM, "running Cortex-M firmware")


def _failure(p: subprocess.CompletedProcess, board: Board) -> str:
    """Why the firmware stopped, in one phrase. A fault whose exception entry cannot push onto
    the stack locks the core up, and QEMU aborts printing its registers: with the stack at the
    bottom of RAM, an SP below RAM's start means the stack outgrew its reserve."""
    text = p.stderr + p.stdout
    lines = [l for l in text.splitlines() if l.strip()]
    if "Lockup" in text:
        sp = re.search(r"R13=([0-9a-fA-F]{8})", text)
        if sp and int(sp.group(1), 16) < board.ram[0]:
            return (f"{EXIT_REASONS[4]}: the core locked up with SP at {sp.group(1)}, below RAM "
                    f"at {board.ram[0]:#010x}")
        return "the core locked up: a fault while handling a fault"
    why = EXIT_REASONS.get(p.returncode, f"exit {p.returncode}")
    return f"{why}: {lines[-1][:300] if lines else 'no message'}"


def command(qemu: str, board: Board, image: Path) -> list[str]:
    return [qemu, "-M", board.machine, "-cpu", board.cpu, "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", "enable=on,target=native",
            "-icount", f"shift={ICOUNT_SHIFT}", "-kernel", str(Path(image).resolve())]


def run(image: Path, board: Board, images: np.ndarray, *, timeout: int = TIMEOUT_S,
        scratch: Path | None = None) -> McuRun:
    """Logits (N, classes) of `images` (N, C, H, W) float32, one inference each on the board."""
    if not Path(image).is_file():
        raise UserError(f"the firmware image {image} does not exist: build it first")
    x = np.ascontiguousarray(images, dtype="<f4")
    if x.ndim != 4 or x.shape[0] == 0:
        raise UserError(f"the firmware takes images (N, C, H, W), got shape {list(x.shape)}")
    argv = command(find_qemu(), board, image)
    with tempfile.TemporaryDirectory(prefix="edgeprune-mcu-", dir=scratch) as d:
        job = Path(d)
        (job / "input.f32").write_bytes(x.tobytes())
        try:
            p = child.run(argv, cwd=job, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"the firmware on {board.machine} took over {timeout} s") from None
        if p.returncode != 0:
            raise UserError(f"the firmware failed on {board.machine} ({_failure(p, board)})")
        info = json.loads((job / "info.json").read_text())
        n, k = x.shape[0], int(info["num_classes"])
        if list(info["input_shape"]) != list(x.shape[1:]) or int(info["images"]) != n:
            raise UserError(f"the firmware takes images of shape {info['input_shape']}, got "
                            f"{list(x.shape[1:])}")
        logits = np.fromfile(job / "logits.f32", dtype="<f4")
        ticks = np.fromfile(job / "ticks.u32", dtype="<u4")
    if logits.size != n * k or ticks.size != n:
        raise UserError(f"the firmware wrote {logits.size} logits and {ticks.size} timings for "
                        f"{n} images of {k} classes")
    ns_per_tick = 1e9 / board.sysclk_hz  # = instructions per tick at -icount shift=0
    return McuRun(logits.reshape(n, k).astype(np.float32),
                  [int(round(t * ns_per_tick)) for t in ticks],
                  [float(t) * 1e3 / board.sysclk_hz for t in ticks], info, argv,
                  NOTE.format(machine=board.machine))

"""Run a built C runtime (targets/c_build.py): feed float32 images to its standalone runner and
read the logits back, natively or, for an aarch64 build on an x86-64 host, under
`qemu-aarch64-static -cpu CORE` (user-mode emulation; the core is pinned to the device's
baseline). Torch-free (stdlib + numpy).

    info(build) -> dict                      the runner's --info (input shape, classes, T, ...)
    run(build, images, *, bench=None, qemu_cpu="cortex-a72") -> CRun
    spike_counts(build, images) -> dict      the runner's --stats (spikes per LIF layer)

Emulated latency is not indicative of the device (QEMU translates every instruction): a CRun
from an emulated run says so in `latency_note`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from edgeprune.errors import UserError

from . import platforms
from .c_build import CBuild

EMULATED_NOTE = platforms.EMULATED_NOTE


@dataclass
class CRun:
    logits: np.ndarray  # (N, classes) float32
    latencies_ms: list[float] | None  # per timed run, when bench was asked for
    mode: str  # native | emulated | remote
    command: list[str]  # how the runner was started
    latency_note: str | None  # set when the latencies mean nothing for the device

    def percentiles(self) -> dict:
        """p50/p95/p99 (ms) of the timed runs ({} without them)."""
        if not self.latencies_ms:
            return {}
        a = np.asarray(self.latencies_ms)
        return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}


def platform_of(build: CBuild, qemu_cpu: str = "cortex-a72") -> platforms.Platform:
    """Where a build made on this host runs by default: natively, or (aarch64 on x86-64)
    under qemu-aarch64 user mode on `qemu_cpu`."""
    if build.native:
        return platforms.Native(build.isa)
    if build.isa != "aarch64":
        raise UserError(f"cannot run a {build.isa} build on this host")
    return platforms.QemuUser(build.isa, qemu_cpu)


def _call(pf: platforms.Platform, build: CBuild, args: list[str], stdin: bytes) -> bytes:
    argv = pf.c_argv(build, args)
    p = pf.call(argv, "the C runner", input=stdin)
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        why = (f"killed by signal {-p.returncode}" if p.returncode < 0
               else f"exit {p.returncode}")
        raise UserError(f"the C runner failed ({pf.mode}, {why}): "
                        f"{err[-1][:300] if err else 'no message'}")
    return p.stdout


def info(build: CBuild, *, qemu_cpu: str = "cortex-a72",
         platform: platforms.Platform | None = None) -> dict:
    pf = platform or platform_of(build, qemu_cpu)
    return json.loads(_call(pf, build, ["--info"], b""))


def _images(images: np.ndarray, shape: list[int]) -> bytes:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or list(x.shape[1:]) != list(shape) or x.shape[0] == 0:
        raise UserError(f"the C runtime takes images of shape (N, {', '.join(map(str, shape))}), "
                        f"got {list(x.shape)}")
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def run(build: CBuild, images: np.ndarray, *, bench: tuple[int, int] | None = None,
        qemu_cpu: str = "cortex-a72", model_info: dict | None = None,
        platform: platforms.Platform | None = None) -> CRun:
    """Logits (N, classes) of `images` (N, C, H, W) float32 in [0, 1]. With bench=(runs,
    warmup), also time `runs` single-image inferences (after `warmup` untimed ones) inside the
    runner, cycling over the images: per-run milliseconds without process-start overhead.
    `platform`: where it runs (default: natively, or under QEMU for an aarch64 build)."""
    pf = platform or platform_of(build, qemu_cpu)
    meta = model_info or info(build, platform=pf)
    payload = _images(images, meta["input_shape"])
    argv = pf.c_argv(build, [])
    out = _call(pf, build, [], payload)
    n, k = len(payload) // (4 * int(np.prod(meta["input_shape"]))), meta["num_classes"]
    if len(out) != 4 * n * k:
        raise UserError(f"the C runner wrote {len(out)} bytes, expected {4 * n * k} "
                        f"({n} x {k} float32 logits)")
    logits = np.frombuffer(out, dtype="<f4").reshape(n, k).astype(np.float32)
    latencies = None
    if bench is not None:
        runs, warmup = (int(v) for v in bench)
        result = json.loads(_call(pf, build, ["--bench", str(runs), str(warmup)], payload))
        latencies = [float(v) for v in result["latency_ms"]]
    note = pf.latency_note if bench is not None else None
    return CRun(logits, latencies, pf.mode, argv, note)


def spike_counts(build: CBuild, images: np.ndarray, *, qemu_cpu: str = "cortex-a72",
                 model_info: dict | None = None,
                 platform: platforms.Platform | None = None) -> dict:
    """{"images", "timesteps", "layers": [{"name", "neurons", "spikes", "rate"}]}: spikes per
    LIF layer summed over images and steps; rate = spikes / (neurons * timesteps * images)."""
    pf = platform or platform_of(build, qemu_cpu)
    meta = model_info or info(build, platform=pf)
    result = json.loads(_call(pf, build, ["--stats"], _images(images, meta["input_shape"])))
    for layer in result["layers"]:
        denom = layer["neurons"] * result["timesteps"] * result["images"]
        layer["rate"] = layer["spikes"] / denom if denom else 0.0
    return result

"""ARM64 ONNX Runtime on an x86-64 host: qemu-aarch64-static in user mode, no chroot, no binfmt.

The emulated process is the real aarch64 build of CPython + numpy + onnxruntime:
- a sysroot of Debian's arm64 packages (libc, libstdc++, python3.11...), fetched with
  `apt-get download NAME:arm64` and unpacked with `dpkg-deb -x` (nothing arm64 is installed);
- the aarch64 manylinux wheels of onnxruntime and numpy, `pip install --target SITE`, pinned to
  the host's versions so a parity difference is the ISA's, not a version's;
- QEMU passes the host's x86 /proc/cpuinfo through and onnxruntime's CPU detection segfaults on
  it, so each emulated core gets an overlay root whose /proc/cpuinfo describes that core
  (`-L` serves it to the guest); the other top-level entries are symlinks to the shared sysroot;
- `-cpu CORE` pins the emulated core to the device's baseline so no newer instruction is used.

Everything is built once under $EDGEPRUNE_CACHE/arm64 (default ~/.cache/edgeprune/arm64),
each part under a temporary name and renamed into place, behind a file lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from edgeprune.errors import UserError

from . import child, tools

GUEST_PYTHON = "3.11"
PACKAGES = ("libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8",
            f"python{GUEST_PYTHON}-minimal", f"libpython{GUEST_PYTHON}-minimal",
            f"libpython{GUEST_PYTHON}-stdlib")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")

# MIDR part numbers and the Features line Linux shows for each core (what the device reports;
# claiming no more than the emulated core has keeps ONNX Runtime off instructions it lacks).
CORES = {
    "cortex-a53": ("0xd03", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a57": ("0xd07", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),  # Raspberry Pi 4 (no crypto)
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                            "cpuid asimdrdm lrcpc dcpop asimddp"),
    "neoverse-n1": ("0xd0c", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                             "cpuid asimdrdm lrcpc dcpop asimddp ssbs"),
}

Progress = Callable[[str], None]


def cache_root() -> Path:
    base = os.environ.get("EDGEPRUNE_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edgeprune") / "arm64"


def ready() -> bool:
    """Whether the cache holds a built, smoke-tested emulator (else the first run builds it)."""
    return (cache_root() / "ready.json").is_file()


@dataclass(frozen=True)
class Emulator:
    qemu: str
    sysroot: Path
    site: Path
    onnxruntime: str
    setup_seconds: float  # 0 when everything came from the cache

    def command(self, core: str, args: list[str]) -> tuple[list[str], dict]:
        """argv and environment that run the guest python with `args` on `core`."""
        root = core_root(self.sysroot, core)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(self.site),
               "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [self.qemu, "-cpu", core, "-L", str(root),
                str(root / "usr" / "bin" / f"python{GUEST_PYTHON}"), *args]
        return argv, env


def find_qemu() -> str:
    found = tools.QEMU.find()
    if found:
        return found
    raise UserError("ARM64 emulation needs qemu-aarch64-static, which is not installed: "
                    f"install it with `apt-get install {tools.QEMU.package}` (Debian/Ubuntu), or "
                    f"run the ARM64 targets on an aarch64 machine {tools.SEE_DOCTOR}")


def check_core(core: str, qemu: str) -> None:
    if core not in CORES:
        raise UserError(f"emulation.qemu_cpu {core!r} is not supported: choose one of "
                        f"{', '.join(CORES)}")
    listed = child.run([qemu, "-cpu", "help"], text=True).stdout
    if core not in listed.split():
        raise UserError(f"this QEMU ({qemu}) does not emulate {core}; upgrade qemu-user-static")


def setup(progress: Progress = lambda m: None) -> Emulator:
    """The emulator, built on first use and reused from the cache afterwards."""
    qemu = find_qemu()
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the ARM64 cache {root}: {e.strerror} "
                        "(set EDGEPRUNE_CACHE to a writable directory)") from None
    ort_version, np_version = _host_version("onnxruntime"), _host_version("numpy")
    t0 = time.perf_counter()
    built = False
    with _lock(root / ".lock"):
        sysroot = root / "sysroot"
        if not (sysroot / ".complete").exists():
            _build_sysroot(sysroot, progress)
            built = True
        site = root / f"site-ort{ort_version}-numpy{np_version}"
        if not (site / ".complete").exists():
            _build_site(site, ort_version, np_version, progress)
            built = True
        emu = Emulator(qemu, sysroot, site, ort_version, 0.0)
        if built:
            _smoke_test(emu, progress)
    seconds = time.perf_counter() - t0 if built else 0.0
    return Emulator(qemu, sysroot, site, ort_version, seconds)


def core_root(sysroot: Path, core: str) -> Path:
    """An overlay root for one core: symlinks to the sysroot plus that core's /proc/cpuinfo."""
    part, features = CORES[core]
    root = sysroot.parent / f"root-{core}"
    if (root / ".complete").exists():
        return root
    tmp = Path(tempfile.mkdtemp(prefix=f".root-{core}-", dir=sysroot.parent))
    for entry in sysroot.iterdir():
        if entry.name not in ("proc", ".complete"):
            (tmp / entry.name).symlink_to(entry)
    (tmp / "proc").mkdir()
    (tmp / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\n"
        f"Features\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        f"CPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n")
    (tmp / ".complete").touch()
    try:
        os.rename(tmp, root)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# -- building the cache ------------------------------------------------------------------------

def _host_version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        raise UserError(f"{pkg} is not installed on this host: `pip install {pkg}`") from None


@contextmanager
def _lock(path: Path):
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two processes setting up at once wait for each other
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], what: str, cwd: Path | None = None, timeout: int = 900):
    try:
        p = child.run(argv, cwd=cwd, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: `{' '.join(argv[:3])} ...` took over {timeout} s "
                        "(no network access?)") from None
    return p


def _tail(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:240] if lines else "no output"


def _build_sysroot(sysroot: Path, progress: Progress) -> None:
    for tool, pkg in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("dpkg", "dpkg")):
        if not shutil.which(tool):
            raise UserError(f"building the ARM64 sysroot needs {tool} (Debian/Ubuntu's {pkg}); "
                            "on other systems run the ARM64 targets on an aarch64 machine")
    archs = _run(["dpkg", "--print-foreign-architectures"], "dpkg").stdout.split()
    if "arm64" not in archs:
        if os.geteuid() != 0:
            raise UserError("apt does not know the arm64 architecture yet; run once as root: "
                            "`dpkg --add-architecture arm64 && apt-get update`")
        progress("arm64: dpkg --add-architecture arm64; apt-get update")
        _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture")
        _apt_update()
    shutil.rmtree(sysroot, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sysroot-", dir=sysroot.parent))
    try:
        debs = tmp / "debs"
        debs.mkdir()
        progress(f"arm64: apt-get download {len(PACKAGES)} Debian arm64 packages")
        argv = ["apt-get", "download", *(f"{p}:arm64" for p in PACKAGES)]
        p = _run(argv, "apt-get download", cwd=debs)
        if p.returncode != 0 and os.geteuid() == 0:  # stale lists without arm64: refresh once
            _apt_update()
            p = _run(argv, "apt-get download", cwd=debs)
        if p.returncode != 0:
            raise UserError("cannot download the arm64 packages for the emulator "
                            f"(apt-get download: {_tail(p.stderr)}); needs network access to "
                            "the Debian mirror and `dpkg --add-architecture arm64 && apt-get update`")
        root = tmp / "root"
        root.mkdir()
        progress("arm64: unpacking the sysroot (dpkg-deb -x)")
        for deb in sorted(debs.glob("*.deb")):
            p = _run(["dpkg-deb", "-x", str(deb), str(root)], "dpkg-deb")
            if p.returncode != 0:
                raise UserError(f"dpkg-deb -x {deb.name} failed: {_tail(p.stderr)}")
        if not (root / "usr" / "bin" / f"python{GUEST_PYTHON}").exists():
            raise UserError(f"the arm64 packages hold no python{GUEST_PYTHON}: this apt source "
                            f"has another Python (the emulator expects Debian bookworm's)")
        (root / ".complete").touch()
        os.rename(root, sysroot)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _apt_update() -> None:
    p = _run(["apt-get", "update", "-qq"], "apt-get update")
    if p.returncode != 0:
        raise UserError(f"apt-get update failed: {_tail(p.stderr)}")


def _build_site(site: Path, ort_version: str, np_version: str, progress: Progress) -> None:
    progress(f"arm64: pip install aarch64 wheels onnxruntime=={ort_version} numpy=={np_version}")
    shutil.rmtree(site, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".site-", dir=site.parent))
    try:
        argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "--no-compile", "--target", str(tmp), "--only-binary=:all:",
                "--implementation", "cp", "--python-version", GUEST_PYTHON,
                *(a for plat in WHEEL_PLATFORMS for a in ("--platform", plat)),
                f"onnxruntime=={ort_version}", f"numpy=={np_version}"]
        p = _run(argv, "pip install (aarch64 wheels)")
        if p.returncode != 0:
            raise UserError("cannot install the aarch64 wheels of onnxruntime and numpy "
                            f"(pip: {_tail(p.stderr or p.stdout)}); needs access to PyPI or "
                            "a pip index/cache that has them")
        (tmp / ".complete").touch()
        os.rename(tmp, site)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _smoke_test(emu: Emulator, progress: Progress) -> None:
    progress("arm64: checking onnxruntime imports under qemu-aarch64")
    argv, env = emu.command("cortex-a72", ["-c", "import platform, onnxruntime; "
                                           "print(platform.machine(), onnxruntime.__version__)"])
    p = child.run(argv, env=env, text=True, timeout=300)
    if p.returncode != 0 or "aarch64" not in p.stdout:
        raise UserError(f"the emulated onnxruntime does not start (exit {p.returncode}: "
                        f"{_tail(p.stderr or p.stdout)}); delete {cache_root()} and retry")
    (emu.sysroot.parent / "ready.json").write_text(json.dumps(
        {"onnxruntime": emu.onnxruntime, "packages": list(PACKAGES), "qemu": emu.qemu,
         "guest": p.stdout.strip()}) + "\n")

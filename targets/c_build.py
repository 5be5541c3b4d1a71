"""Compile the generated C runtime (export/c_codegen.py) for a target: natively with `cc`, or
for aarch64 with Debian's cross compiler `aarch64-linux-gnu-gcc`. Torch-free (stdlib only).

    build(src_folder, out_folder=None, *, isa="native", sanitize=False, mcpu=None) -> CBuild

compiles model.c + model_weights.c into objects and a static library `libmodel.a` (what a
firmware or an application links), and runner.c against it into the `runner` executable.
Flags: -O2 -std=c99 -ffp-contract=off (no fused multiply-add: spikes must see the same
rounding as PyTorch) -Wall -Wextra. aarch64 executables are linked statically so that
`qemu-aarch64-static` runs them without a sysroot. `sanitize=True` builds the runner with
AddressSanitizer + UndefinedBehaviorSanitizer (native only; any finding aborts the run).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import UserError

from . import child, elf, tools
from .tools import LINUX_ISAS as ISAS, host_isa

SOURCES = ("model.c", "model_weights.c")
RUNNER_SOURCE = "runner.c"
# Every file of a generated C runtime: what an export writes, a validation builds and a bundle
# ships under c/.
FILES = ("model.h", *SOURCES, RUNNER_SOURCE)
# What a build leaves that a validation keeps per target and a bundle ships under c/<target>/.
BINARIES = ("runner", "libmodel.a")
BASE_FLAGS = ("-std=c99", "-ffp-contract=off", "-Wall", "-Wextra")
OPT_FLAGS = ("-O2",)
SANITIZE_FLAGS = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all")
COMPILE_TIMEOUT_S = 600


@dataclass(frozen=True)
class CBuild:
    folder: Path  # where the objects, library and runner are
    isa: str  # x86_64 | aarch64
    native: bool  # runs on this host without emulation
    sanitize: bool
    compiler: str  # the compiler executable used
    flags: tuple[str, ...]
    runner: Path  # the standalone runner executable
    library: Path  # libmodel.a: model.o + model_weights.o
    objects: tuple[Path, ...]
    static: bool  # the runner is statically linked
    warnings: str = ""  # what the compiler printed (empty for a clean build)
    sizes: dict = field(default_factory=dict)  # elf.sizes() of the model's objects


def find_compiler(isa: str) -> str:
    """The C compiler for `isa` on this host; a UserError naming the package when missing."""
    tool = tools.compiler_for(isa)
    found = tool and tool.find()
    if found:
        return found
    if tool is tools.CC:
        raise UserError("building the C runtime needs a C compiler, and none (cc, gcc, clang) "
                        f"is installed: install one with `apt-get install {tool.package}` "
                        f"(Debian/Ubuntu) {tools.SEE_DOCTOR}")
    if tool is tools.CROSS_CC:
        raise UserError("building the C runtime for aarch64 needs the cross compiler "
                        f"aarch64-linux-gnu-gcc: install it with `apt-get install {tool.package}`"
                        f" (Debian/Ubuntu); running it here also needs `apt-get install "
                        f"{tools.QEMU.package}` {tools.SEE_DOCTOR}")
    raise UserError(f"cannot build the C runtime for {isa} on this {host_isa()} host "
                    f"(supported: {', '.join(ISAS)}; aarch64 cross-builds from x86_64)")


def find_tools(isa: str) -> tuple[str, str]:
    """The compiler and the archiver for `isa`; a UserError naming the package when one is
    missing (checked before any work)."""
    compiler = find_compiler(isa)
    return compiler, _archiver(compiler)


def _archiver(compiler: str) -> str:
    """`ar` matching the compiler (aarch64-linux-gnu-ar for the cross compiler)."""
    name = Path(compiler).name
    if name.endswith("-gcc"):
        cross = shutil.which(name[:-len("gcc")] + "ar")
        if cross:
            return cross
    for n in ("ar", "gcc-ar"):
        found = shutil.which(n)
        if found:
            return found
    raise UserError("building the C runtime's static library needs `ar`: install it with "
                    f"`apt-get install binutils` (Debian/Ubuntu) {tools.SEE_DOCTOR}")


def _run(argv: list[str], what: str) -> str:
    try:
        p = child.run(argv, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: took over {COMPILE_TIMEOUT_S} s") from None
    except OSError as e:
        raise UserError(f"{what}: cannot start {argv[0]}: {e.strerror}") from None
    if p.returncode != 0:
        lines = [l for l in (p.stderr or p.stdout).splitlines() if "error" in l.lower()]
        detail = (lines[0] if lines else (p.stderr or p.stdout).strip()[-240:]).strip()
        raise UserError(f"{what} failed (exit {p.returncode}): {detail[:300]}")
    return p.stderr


def compile_library(src: Path, out: Path, compiler: str, archiver: str, flags, what: str
                    ) -> tuple[list[Path], Path, list[str]]:
    """The model's objects (SOURCES compiled with `flags` into `out`) and `out/libmodel.a`
    archiving them, plus what the compiler printed; `what` names the build in messages."""
    warnings, objects = [], []
    for name in SOURCES:
        obj = out / (Path(name).stem + ".o")
        warnings.append(_run([compiler, *flags, "-c", str(src / name), "-o", str(obj)],
                             f"compiling {name} {what}"))
        objects.append(obj)
    library = out / "libmodel.a"
    library.unlink(missing_ok=True)
    _run([archiver, "rcs", str(library), *map(str, objects)], "archiving libmodel.a")
    return objects, library, warnings


def build(src: Path, out: Path | None = None, *, isa: str = "native", sanitize: bool = False,
          mcpu: str | None = None, extra_flags: tuple[str, ...] = (),
          static: bool | None = None) -> CBuild:
    """Compile the sources in `src` (written by export.c_codegen.write_c) into `out` (default:
    `src/build-<isa>[-sanitize]`). `isa`: "native", "x86_64" or "aarch64". `mcpu`: e.g.
    "cortex-a72" for aarch64 (-mcpu), to use no instruction the device lacks. `static`: link
    the runner statically (default: when it is not for this host)."""
    src = Path(src)
    missing = [n for n in FILES if not (src / n).is_file()]
    if missing:
        raise UserError(f"{src} is not a generated C runtime folder (missing {', '.join(missing)})")
    isa = host_isa() if isa == "native" else isa
    if isa not in ISAS:
        raise UserError(f"unknown ISA {isa!r} for the C runtime: choose native, x86_64 or aarch64")
    native = isa == host_isa()
    if sanitize and not native:
        raise UserError("sanitizer builds are native only (ASan/UBSan runtimes do not run "
                        "under qemu user emulation)")
    compiler, archiver = find_tools(isa)
    out = Path(out) if out else src / f"build-{isa}{'-sanitize' if sanitize else ''}"
    out.mkdir(parents=True, exist_ok=True)
    flags = [*BASE_FLAGS, *(SANITIZE_FLAGS if sanitize else OPT_FLAGS)]
    if mcpu:
        flags.append(f"-mcpu={mcpu}")
    flags += list(extra_flags)
    if static is None:
        static = not native  # qemu-aarch64-static runs a static binary without a sysroot
    objects, library, warnings = compile_library(src, out, compiler, archiver, flags, f"({isa})")
    runner = out / "runner"
    link = [compiler, *flags, "-I", str(src), str(src / RUNNER_SOURCE), str(library),
            "-o", str(runner)]
    if static:
        link.insert(1, "-static")
    warnings.append(_run(link, f"linking the runner ({isa})"))
    sizes = {o.name: elf.sizes(o) for o in objects}
    return CBuild(folder=out, isa=isa, native=native, sanitize=sanitize, compiler=compiler,
                  flags=tuple(flags), runner=runner, library=library, objects=tuple(objects),
                  static=static, warnings="".join(warnings).strip(), sizes=sizes)

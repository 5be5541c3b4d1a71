"""The optional system tools the targets need, looked up one way: the runtime (c_build,
emulation, runtime), `edgeprune doctor` and the tests' skip markers all ask here, so they can
never disagree about what this host can run. Stdlib only (doctor runs without torch).
"""
from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass

SEE_DOCTOR = "(see `edgeprune doctor`)"  # ends every missing-tool message


def host_isa() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


@dataclass(frozen=True)
class Tool:
    label: str  # what it is, for people
    names: tuple[str, ...]  # executables tried in order
    package: str  # the Debian package(s) that install it, as one `apt-get install` argument

    def find(self) -> str | None:
        """The first of `names` on PATH, or None."""
        for name in self.names:
            found = shutil.which(name)
            if found:
                return found
        return None


CC = Tool("C compiler", ("cc", "gcc", "clang"), "gcc")
# the cross gcc links the runner statically, so it needs the arm64 libc too
CROSS_CC = Tool("aarch64 cross compiler", ("aarch64-linux-gnu-gcc",),
                "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
QEMU = Tool("ARM64 user-mode emulator", ("qemu-aarch64-static", "qemu-aarch64"),
            "qemu-user-static")
# Cortex-M microcontrollers: the bare-metal compiler (newlib supplies memcpy/memset) and the
# system-mode emulator that runs its firmware on an emulated board (targets/boards.py)
MCU_CC = Tool("Cortex-M bare-metal compiler", ("arm-none-eabi-gcc",),
              "gcc-arm-none-eabi libnewlib-arm-none-eabi")
QEMU_SYSTEM = Tool("Cortex-M board emulator", ("qemu-system-arm",), "qemu-system-arm")


def mode(isa: str) -> str | None:
    """How this host runs code for `isa`: "native", "emulated" (aarch64 under QEMU on x86-64),
    or None when it cannot."""
    host = host_isa()
    if isa == host:
        return "native"
    if isa == "aarch64" and host == "x86_64":
        return "emulated"
    return None


def compiler_for(isa: str) -> Tool | None:
    """The C compiler that builds for `isa` on this host (None: no such build here)."""
    if isa == host_isa():
        return CC
    if isa == "aarch64" and host_isa() == "x86_64":
        return CROSS_CC
    return None


def needed(kind: str, isa: str) -> list[Tool] | None:
    """The tools a target of runtime `kind` ("onnxruntime" | "c") for `isa` needs on this host,
    or None when this host cannot run it at all."""
    how = mode(isa)
    if how is None:
        return None
    tools = []
    if kind == "c":
        tools.append(compiler_for(isa))
    if how == "emulated":
        tools.append(QEMU)
    return tools

"""The optional system tools the targets need, looked up one way: the runtime (c_build,
emulation, runtime), `edgeprune doctor` and the tests' skip markers all ask here, so they can
never disagree about what this host can run. Stdlib only (doctor runs without torch).
"""
from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass

SEE_DOCTOR = "(see `edgeprune doctor`)"  # ends every missing-tool message


# The instruction sets a target profile may name (`isa = ...`): those of Linux hosts (native,
# QEMU user mode, a board over SSH), and that of the Cortex-M4/M7 microcontrollers that run on
# a board emulated by qemu-system-arm (targets/boards.py; a profile's [mcu] names it).
LINUX_ISAS = ("x86_64", "aarch64")
MCU_ISAS = ("armv7e-m",)
ISAS = LINUX_ISAS + MCU_ISAS


def isa_of(machine: str) -> str:
    """The ISA name of a machine string (`uname -m`, platform.machine())."""
    m = machine.strip().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def host_isa() -> str:
    return isa_of(platform.machine())


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
SSH = Tool("OpenSSH client", ("ssh",), "openssh-client")
SSHD = Tool("OpenSSH server (tests only)", ("sshd",), "openssh-server")
QEMU = Tool("ARM64 user-mode emulator", ("qemu-aarch64-static", "qemu-aarch64"),
            "qemu-user-static")
# Cortex-M microcontrollers: the bare-metal compiler (newlib supplies memcpy/memset) and the
# system-mode emulator that runs its firmware on an emulated board (targets/boards.py)
MCU_CC = Tool("Cortex-M bare-metal compiler", ("arm-none-eabi-gcc",),
              "gcc-arm-none-eabi libnewlib-arm-none-eabi")
QEMU_SYSTEM = Tool("Cortex-M board emulator", ("qemu-system-arm",), "qemu-system-arm")


def compiler_for(isa: str) -> Tool | None:
    """The C compiler that builds Linux executables for `isa` on this host (None: no such
    build here)."""
    if isa == host_isa():
        return CC
    if isa == "aarch64" and host_isa() == "x86_64":
        return CROSS_CC
    return None

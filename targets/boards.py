"""The Cortex-M boards QEMU emulates in system mode that a microcontroller target can name: one
record per board, everything its build (compiler flags, linker memory map) and its run (QEMU
machine and core, the SysTick clock) need. Stdlib only.

Memory maps are QEMU's (hw/arm/mps2.c): on AN385/AN386/AN500, ZBT SSRAM1 (4 MB at 0x0, where
the image is loaded and the vector table is read) stands for flash, ZBT SSRAM2&3 (4 MB at
0x20000000) for RAM. Both boards clock SysTick from SYSCLK, 25 MHz.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeprune.errors import UserError


@dataclass(frozen=True)
class Board:
    machine: str  # qemu-system-arm -M
    cpu: str  # qemu -cpu and gcc -mcpu
    fpu: str  # gcc -mfpu (hard-float ABI)
    flash: tuple[int, int]  # (origin, bytes): code memory
    ram: tuple[int, int]  # (origin, bytes): data memory
    sysclk_hz: int  # what SysTick counts (CLKSOURCE = processor clock)
    description: str

    def gcc_flags(self) -> tuple[str, ...]:
        return (f"-mcpu={self.cpu}", "-mthumb", "-mfloat-abi=hard", f"-mfpu={self.fpu}")


_SSRAM1, _SSRAM23 = (0x0000_0000, 4 << 20), (0x2000_0000, 4 << 20)
BOARDS = {
    "mps2-an386": Board("mps2-an386", "cortex-m4", "fpv4-sp-d16", _SSRAM1, _SSRAM23, 25_000_000,
                        "Arm MPS2+ AN386: Cortex-M4 with single-precision FPU"),
    "mps2-an500": Board("mps2-an500", "cortex-m7", "fpv5-d16", _SSRAM1, _SSRAM23, 25_000_000,
                        "Arm MPS2+ AN500: Cortex-M7 with double-precision FPU"),
}


def get(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise UserError(f"unknown QEMU board {name!r}: choose one of {', '.join(BOARDS)}") \
            from None

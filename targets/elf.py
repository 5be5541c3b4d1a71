"""Section headers of an ELF file (32- or 64-bit, little-endian: x86-64, aarch64, Cortex-M
objects and firmware images), read without binutils, and what its loaded sections occupy by
kind. Stdlib only.

    sections(path) -> list[Section]
    sizes(path) -> {"text", "rodata", "data", "bss", "total", "file"}
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import UserError

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHT_NOBITS = 8
# (header fields after e_ident: e_shoff offset and format, e_shentsize/e_shnum/e_shstrndx
# offset; a section header's name/type/flags, and its size's offset and format)
_LAYOUT = {1: (0x20, "<I", 0x2E, "<III", 0x14, "<I"), 2: (0x28, "<Q", 0x3A, "<IIQ", 0x20, "<Q")}


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    size: int

    @property
    def kind(self) -> str | None:
        """text | rodata | data | bss, or None for a section not loaded (symbols, debug)."""
        if not self.flags & SHF_ALLOC:
            return None
        if self.type == SHT_NOBITS:
            return "bss"
        if self.flags & SHF_EXECINSTR:
            return "text"
        return "data" if self.flags & SHF_WRITE else "rodata"


def sections(path: Path) -> list[Section]:
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in _LAYOUT or data[5] != 1:
        raise UserError(f"{path} is not a little-endian ELF file")
    shoff_at, shoff_fmt, counts_at, head_fmt, size_at, size_fmt = _LAYOUT[data[4]]
    try:
        shoff, = struct.unpack_from(shoff_fmt, data, shoff_at)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, counts_at)
        raw = []
        for i in range(shnum):
            base = shoff + i * shentsize
            name, sh_type, flags = struct.unpack_from(head_fmt, data, base)
            size, = struct.unpack_from(size_fmt, data, base + size_at)
            offset, = struct.unpack_from(size_fmt, data, base + size_at - struct.calcsize(size_fmt))
            raw.append((name, sh_type, flags, size, offset))
    except struct.error:
        raise UserError(f"{path}: truncated ELF section headers") from None
    strtab = data[raw[shstrndx][4]:][:raw[shstrndx][3]] if shstrndx < len(raw) else b""
    return [Section(strtab[n:strtab.find(b"\0", n)].decode(errors="replace") if n < len(strtab)
                    else "", t, f, s) for n, t, f, s, _ in raw]


def sizes(path: Path) -> dict:
    """Bytes the loaded sections occupy by kind; "total" excludes bss (it takes no space in the
    file or in flash); "file" is the file's size on disk."""
    out = {"text": 0, "rodata": 0, "data": 0, "bss": 0, "file": Path(path).stat().st_size}
    for s in sections(path):
        if s.kind:
            out[s.kind] += s.size
    out["total"] = out["text"] + out["rodata"] + out["data"]
    return out

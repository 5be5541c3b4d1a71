"""Build the generated C runtime bare-metal for a Cortex-M board (targets/boards.py) with
Debian's `arm-none-eabi-gcc`: the model's objects into `libmodel.a` (what a firmware links) and,
with the semihosting harness (targets/mcu_firmware.py), the firmware image `model.elf` that
QEMU runs. Stdlib only.

    build(src, out, board, *, stack_bytes=STACK_BYTES) -> McuBuild
    footprint(elf) -> {"flash_bytes", "ram_bytes", ...}   what the image needs of the part

Flags: the C runtime's own (-O2 -std=c99 -ffp-contract=off -Wall -Wextra: spikes must see
PyTorch's rounding) plus the board's core and FPU with the hard-float ABI, and a section per
function and object so the linker drops what nothing calls. No startup files: the harness
has its own vector table and reset handler; newlib-nano gives only memcpy/memset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.errors import UserError

from . import elf, mcu_firmware, tools
from .boards import Board
from .c_build import BASE_FLAGS, OPT_FLAGS, SOURCES, _archiver, _run, compile_library

BINARIES = ("model.elf", "libmodel.a")  # what a validation keeps and a bundle ships
STACK_BYTES = 4096  # the firmware's stack reserve (the harness measures the peak it used)
MCU_FLAGS = ("-ffunction-sections", "-fdata-sections")
LINK_FLAGS = ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections")


@dataclass(frozen=True)
class McuBuild:
    folder: Path
    board: Board
    compiler: str
    flags: tuple[str, ...]
    elf: Path  # the firmware image: harness + model
    library: Path  # libmodel.a for the board's core: model.o + model_weights.o
    stack_bytes: int
    warnings: str = ""
    sizes: dict = field(default_factory=dict)  # elf.sizes() of the model's objects


def require(tool: tools.Tool, what: str) -> str:
    """The path of `tool`; a UserError naming its packages when it is not installed."""
    found = tool.find()
    if not found:
        raise UserError(f"{what} needs {' and '.join(tool.names)}: install "
                        f"`apt-get install {tool.package}` (Debian/Ubuntu) {tools.SEE_DOCTOR}")
    return found


def find_compiler() -> str:
    return require(tools.MCU_CC, "building for a Cortex-M board")


def find_tools() -> tuple[str, str]:
    """The bare-metal compiler and its `ar`; a UserError naming the packages when missing."""
    compiler = find_compiler()
    return compiler, _archiver(compiler)


def build(src: Path, out: Path, board: Board, *, stack_bytes: int = STACK_BYTES) -> McuBuild:
    """Compile the generated sources in `src` (model.h, model.c, model_weights.c) for `board`
    into `out`."""
    src, out = Path(src), Path(out)
    missing = [n for n in (*SOURCES, "model.h") if not (src / n).is_file()]
    if missing:
        raise UserError(f"{src} is not a generated C runtime folder (missing {', '.join(missing)})")
    compiler, archiver = find_tools()
    out.mkdir(parents=True, exist_ok=True)
    prefix = mcu_firmware.model_prefix((src / "model.h").read_text(errors="replace"))
    firmware = out / mcu_firmware.FIRMWARE_SOURCE
    firmware.write_text(mcu_firmware.firmware_c(prefix))
    script = out / mcu_firmware.LINKER_SCRIPT
    script.write_text(mcu_firmware.linker_script(board, stack_bytes))
    flags = (*BASE_FLAGS, *OPT_FLAGS, *board.gcc_flags(), *MCU_FLAGS)
    what = f"({board.machine}, {board.cpu})"
    objects, library, warnings = compile_library(src, out, compiler, archiver, flags, what)
    image = out / "model.elf"
    warnings.append(_run([compiler, *flags, *LINK_FLAGS, "-T", str(script), "-I", str(src),
                          str(firmware), str(library), "-o", str(image)],
                         f"linking the firmware {what}"))
    return McuBuild(folder=out, board=board, compiler=compiler, flags=flags, elf=image,
                    library=library, stack_bytes=stack_bytes,
                    warnings="".join(warnings).strip(),
                    sizes={o.name: elf.sizes(o) for o in objects})


def footprint(image: Path) -> dict:
    """What the firmware image needs of the part, from its section headers: flash = code +
    constants (+ the initial values of .data, stored in flash and copied at reset); RAM =
    .data + .bss + the stack reserve (the `.stack` section)."""
    secs = elf.sections(image)
    by = {k: sum(s.size for s in secs if s.kind == k and s.name != ".stack")
          for k in ("text", "rodata", "data", "bss")}
    stack = sum(s.size for s in secs if s.name == ".stack")
    return {"flash_bytes": by["text"] + by["rodata"] + by["data"],
            "ram_bytes": by["data"] + by["bss"] + stack, **{f"{k}_bytes": v for k, v in by.items()},
            "stack_bytes": stack}

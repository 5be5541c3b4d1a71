"""C text for the generated runtime: float32 literals that round-trip exactly, const arrays,
index types and comments (export/c_codegen.py and its op emitters write with these)."""
from __future__ import annotations

import numpy as np

from edgeprune.errors import UserError


def uint_type(maxval: int) -> tuple[str, int]:
    """The smallest unsigned C type that holds `maxval`, and its bytes."""
    for t, b, lim in (("uint8_t", 1, 0xFF), ("uint16_t", 2, 0xFFFF), ("uint32_t", 4, 0xFFFFFFFF)):
        if maxval <= lim:
            return t, b
    raise UserError(f"C program: an index of {maxval} does not fit 32 bits")


def hexf(v) -> str:
    """A float32 as a C99 hexadecimal float literal (exact)."""
    v = float(np.float32(v))
    if v == 0.0:
        return "-0.0f" if np.signbit(v) else "0.0f"
    h = v.hex()  # e.g. '-0x1.8000000000000p-1'
    mant, exp = h.split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}f"


def array(ctype: str, name: str, values, fmt) -> str:
    """A `const` C array definition (one unused element when empty: C has no empty arrays)."""
    vals = list(values)
    if not vals:
        vals = [0]
    lines = []
    per = 8 if ctype == "float" else 16
    for i in range(0, len(vals), per):
        lines.append("    " + ", ".join(fmt(v) for v in vals[i:i + per]) + ",")
    return f"const {ctype} {name}[{len(vals)}] = {{\n" + "\n".join(lines) + "\n};\n"


def comment(text: str) -> str:
    """`text` safe inside a C comment."""
    return text.replace("*/", "* /")

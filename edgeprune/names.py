"""Plain file names: what a manifest, a profile or a bundle may name and a reader then joins to
a folder. One path component, so the joined path stays inside that folder. Torch-free, so
targets/ can use it on a device."""
from __future__ import annotations

from .errors import UserError

MAX_NAME = 255  # the longest name POSIX file systems store (NAME_MAX)


def plain_name(name, what: str) -> str:
    """`name` itself when it is a plain file name; else UserError naming `what` it was for.
    Refused: non-strings, empty names, `.` and `..`, separators (`/`, and `\\` for Windows
    readers of a bundle), NUL and other control characters, and names longer than NAME_MAX
    bytes."""
    if not isinstance(name, str):
        raise UserError(f"{what}: a file name must be a string, got {type(name).__name__}")
    shown = repr(name[:60]) + ("…" if len(name) > 60 else "")
    if name in ("", ".", ".."):
        raise UserError(f"{what}: {shown} is not a file name")
    if "/" in name or "\\" in name:
        raise UserError(f"{what}: {shown} is a path, not a plain file name (no separators)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(f"{what}: {shown} holds a control character")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise UserError(f"{what}: a file name of {len(name)} characters is longer than "
                        f"{MAX_NAME} bytes")
    return name

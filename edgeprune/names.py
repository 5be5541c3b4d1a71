"""Plain file names: what a manifest, a profile or a bundle may name and a reader then joins to a
folder. A plain name is one path component of portable characters (letters, digits, `.`, `_`,
`-`, `+`), not `.` or `..`, at most MAX_NAME characters, so the joined path stays inside that
folder; a bundle path is plain names joined by `/`. Torch-free, so targets/ can use it on a
device."""
from __future__ import annotations

import re

from .bounded_read import shown
from .errors import UserError

MAX_NAME = 255  # the longest name POSIX file systems store (NAME_MAX)
MAX_PATH = 255  # a whole bundle member name (the ustar header holds 255 without PAX)
_PLAIN = re.compile(r"[A-Za-z0-9._+-]+")


def problem(name: object) -> str | None:
    """Why `name` is not a plain name, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "empty or not text"
    if len(name) > MAX_NAME:
        return f"{len(name)} characters long (at most {MAX_NAME})"
    if "/" in name or "\\" in name:
        return "more than one path component"
    if name in (".", ".."):
        return "'.' or '..'"
    if not _PLAIN.fullmatch(name):
        return "made of characters other than letters, digits, '.', '_', '-' and '+'"
    return None


def plain_name(name: object, what: str) -> str:
    """`name` itself when it is a plain name, else a one-line UserError naming `what` it is."""
    why = problem(name)
    if why:
        raise UserError(f"{what}: {shown(name)} is not a plain file name ({why}); refusing to "
                        "use it as a path")
    return name


def path_problem(path: str) -> str | None:
    """Why `path` is not a bundle path (plain names joined by '/'), or None when it is one."""
    if len(path) > MAX_PATH:
        return f"{len(path)} characters long (at most {MAX_PATH})"
    if path.startswith("/"):
        return "an absolute path"
    for part in path.rstrip("/").split("/"):  # a folder member may end in '/'
        if part == "..":
            return "'..' in its path"
        why = problem(part)
        if why:
            return f"a component that is {why}"
    return None

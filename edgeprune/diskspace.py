"""Writing to a disk that may be full or over quota (ENOSPC, EDQUOT): bad input, not a crash.

Writers that stream into a file themselves report a full disk badly: torch.save raises a
RuntimeError without an errno and leaves its half-written file, safetensors raises its own
error type, and h5py (under NIR) can segfault. So such content is serialized to bytes in
memory first and written here: the free space is checked against its size before anything is
written, the bytes go to a temporary name in the same folder and are renamed into place, and
the temporary file is removed whatever goes wrong. Torch-free.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UserError

FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError):
    """No space (or quota) left where a file was being written."""


def is_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in FULL


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its
    nearest existing parent); None when it cannot be told."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def full_error(where, needed: int | None = None, free: int | None = None,
               e: OSError | None = None) -> DiskFull:
    """The one line for a full disk while writing `where`, with the bytes it needed and the
    bytes free where known."""
    reason = "over the disk quota" if e is not None and e.errno == errno.EDQUOT else \
        "no space left on the device"
    sizes = ", ".join(s for s in (f"needs {needed:,} bytes" if needed is not None else "",
                                  f"{free:,} free" if free is not None else "") if s)
    return DiskFull((f"cannot write {where}: " if where else "a write failed: ") + reason
                    + (f" ({sizes})" if sizes else "")
                    + "; free some space and rerun (finished results are kept)")


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, refusing up front when it cannot fit."""
    path = Path(path)
    free = free_bytes(path.parent)
    if free is not None and free < len(data):
        raise full_error(path, len(data), free)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_full(e):
            raise full_error(path, len(data), free_bytes(path.parent), e) from None
        raise

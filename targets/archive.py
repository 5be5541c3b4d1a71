"""Reading and writing bundle archives (.tar.gz) safely.

Extraction refuses, before writing anything, any member that is not a plain file or directory
(symlinks, hard links, devices, FIFOs), has an absolute path or a `..` component, or would land
outside the destination: a bundle comes from elsewhere and must not write outside its folder.
"""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path, PurePosixPath

from edgeprune.errors import UserError


def pack(top: str, files: dict[str, bytes]) -> bytes:
    """A deterministic .tar.gz (fixed mtimes, owners and modes) of `files` under `top/`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(f"{top}/{name}")
            executable = name.endswith("/runner")  # the C runtime's standalone runners
            info.size, info.mode, info.mtime = len(files[name]), 0o755 if executable else 0o644, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _unsafe(m: tarfile.TarInfo) -> str | None:
    p = PurePosixPath(m.name)
    if m.name.startswith("/") or p.is_absolute():
        return "absolute path"
    if ".." in p.parts:
        return "'..' in its path"
    if m.issym() or m.islnk():
        return f"a link (to {m.linkname!r})"
    if not (m.isfile() or m.isdir()):
        return "a device, FIFO or other special file"
    return None


def extract(path: Path, dest: Path) -> dict[str, bytes]:
    """Check every member, then read the files into memory and write them under `dest`.
    Returns {relative path inside the bundle's top folder: content}."""
    try:
        tar = tarfile.open(path, mode="r:*")
    except (OSError, tarfile.TarError) as e:
        raise UserError(f"{path} is not a readable bundle (.tar.gz): {e}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
            raise UserError(f"{path} is damaged: {e}") from None
        for m in members:
            why = _unsafe(m)
            if why:
                raise UserError(f"refusing bundle {path}: member {m.name!r} is {why}")
        tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
        if len(tops) != 1:
            raise UserError(f"refusing bundle {path}: expected one top-level folder, found "
                            f"{len(tops)}")
        files: dict[str, bytes] = {}
        for m in members:
            if m.isfile():
                rel = str(PurePosixPath(*PurePosixPath(m.name).parts[1:]))
                if rel in files:
                    raise UserError(f"refusing bundle {path}: member {m.name!r} appears twice")
                f = tar.extractfile(m)
                try:
                    files[rel] = f.read() if f else b""
                except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
                    raise UserError(f"{path} is damaged at {m.name!r}: {e}") from None
    root = dest.resolve()
    for rel, data in files.items():
        target = (root / rel).resolve()
        if root not in target.parents:  # belt and braces after the member checks above
            raise UserError(f"refusing bundle {path}: {rel!r} resolves outside the bundle")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files

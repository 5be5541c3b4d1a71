"""Reading and writing bundle archives (.tar.gz) safely and within bounds.

A bundle comes from elsewhere: reading one must not write outside its folder, nor take memory,
disk or time out of proportion to what its manifest declares. `pack` writes the manifest (and
its signature) as the first members, so `read` knows every member's size before it inflates any
other member's data. `read` makes two passes over the stream:

1. headers: every member must be a plain file or folder (no links, devices, FIFOs, sparse
   files) whose name is plain names joined by '/' (edgeprune/names.py), inside one top folder,
   never both a file and a folder, at most MAX_MEMBERS of them; PAX and GNU extended headers
   are capped at MAX_HEADER_BYTES each (refused before they are read). The leading members
   (the manifest, its signature) are read into memory, each capped; `declare` turns them into
   the declared size of every other member. A member that is not declared, or not of its
   declared size, ends the pass (its data is never inflated), and so does a declared total
   that exceeds MAX_TOTAL_BYTES or the free space of the destination.
2. data, only when pass 1 found nothing wrong: each member is streamed to disk in chunks,
   never more than its declared size.

Refusals of the archive's structure are a UserError (exit 2); members that disagree with the
manifest are returned as problems for the caller to fail. Error lines name at most a few
members (`summary`).
"""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from edgeprune import names
from edgeprune.bounded_read import shown
from edgeprune.errors import UserError


MAX_MEMBERS = 4096  # a bundle has a few dozen; 4096 leaves room for many validations
MAX_HEADER_BYTES = 64 * 1024  # one PAX/GNU extended header; real ones are under 1 KiB
MAX_CHAINED = 4  # extended headers in front of one member (PAX 'x' and 'g', GNU 'L' and 'K')
MAX_TOTAL_BYTES = 16 * 1024 ** 3  # what any manifest may declare in all
LEADING = ("manifest.json", "manifest.json.sig")  # a bundle's manifest and its signature
CHUNK = 1 << 20
PROBLEMS_SHOWN = 3
_EXTENDED = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_FILE_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE}


def pack(top: str, files: dict[str, bytes], first: tuple[str, ...] = LEADING) -> bytes:
    """A deterministic .tar.gz (fixed mtimes, owners and modes) of `files` under `top/`: the
    names in `first` that `files` holds lead, in that order, then the rest sorted."""
    raw = io.BytesIO()
    order = [n for n in first if n in files] + sorted(set(files) - set(first))
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in order:
            info = tarfile.TarInfo(f"{top}/{name}")
            executable = name.endswith("/runner")  # the C runtime's standalone runners
            info.size, info.mode, info.mtime = len(files[name]), 0o755 if executable else 0o644, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def summary(problems: list[str]) -> str:
    """The first few problems and how many more: an error line stays short."""
    more = len(problems) - PROBLEMS_SHOWN
    return "; ".join(problems[:PROBLEMS_SHOWN]) + (f"; and {more} more" if more > 0 else "")


class _Refused(Exception):
    """A header refused before its data is read (raised from inside tarfile)."""


class _BoundedInfo(tarfile.TarInfo):
    """A TarInfo that refuses an oversized or endlessly chained extended header before
    tarfile reads it into memory."""

    def _proc_member(self, tar):
        if self.type in _EXTENDED:
            tar.chained = getattr(tar, "chained", 0) + 1
            if self.size > MAX_HEADER_BYTES:
                raise _Refused(f"an extended (PAX/GNU) header of {self.size:,} bytes (at most "
                               f"{MAX_HEADER_BYTES:,})")
            if tar.chained > MAX_CHAINED:
                raise _Refused(f"more than {MAX_CHAINED} extended headers before one member")
        else:
            tar.chained = 0
        return super()._proc_member(tar)


@dataclass
class Contents:
    head: dict[str, bytes]  # the leading members, read into memory
    files: dict[str, Path] = field(default_factory=dict)  # every other file, as extracted
    problems: list[str] = field(default_factory=list)  # members that disagree with `declare`

    @property
    def names(self) -> set[str]:
        return set(self.head) | set(self.files)


def _unsafe(m: tarfile.TarInfo) -> str | None:
    if m.issym() or m.islnk():
        return f"a link (to {shown(m.linkname)})"
    if not (m.type in _FILE_TYPES or m.isdir()) or m.sparse is not None:
        return "a device, FIFO, sparse or other special file"
    return names.path_problem(m.name)


class _Members:
    """Iterate a bundle's members with the header checks of pass 1."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.tar = tarfile.open(path, mode="r:gz", tarinfo=_BoundedInfo)
        except _Refused as e:
            raise self.refuse(f"its first header is {e}") from None
        except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
            raise UserError(f"{path} is not a readable bundle (.tar.gz): {e}") from None
        self.count = 0
        self.top: str | None = None
        self.kinds: dict[str, bool] = {}  # path -> is a folder (explicit or implied)

    def refuse(self, why: str) -> UserError:
        return UserError(f"refusing bundle {self.path}: {why}")

    def __iter__(self):
        while True:
            try:
                m = self.tar.next()
            except _Refused as e:
                raise self.refuse(f"member {self.count + 1} has {e}") from None
            except RecursionError:
                raise self.refuse(f"member {self.count + 1} has nested extended headers") \
                    from None
            except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
                raise UserError(f"{self.path} is damaged: {e}") from None
            if m is None:
                return
            self.count += 1
            if self.count > MAX_MEMBERS:
                raise self.refuse(f"it has more than {MAX_MEMBERS:,} members")
            why = _unsafe(m)
            if why:
                raise self.refuse(f"member {shown(m.name)} is {why}")
            rel = self._place(m)
            if rel is not None:
                yield m, rel

    def _place(self, m: tarfile.TarInfo) -> str | None:
        """The member's path inside the top folder (None for a folder), after checking it
        is the one top folder and that no path is both a file and a folder."""
        parts = PurePosixPath(m.name).parts
        if self.top is None:
            self.top = parts[0]
        if parts[0] != self.top:
            raise self.refuse(f"expected one top-level folder, found {shown(self.top)} "
                              f"and {shown(parts[0])}")
        if len(parts) == 1:
            if m.isdir():
                return None
            raise self.refuse(f"member {shown(m.name)} is a file outside the top folder")
        rel = "/".join(parts[1:])
        for i in range(1, len(parts) - 1):  # the folders the member implies
            folder = "/".join(parts[1:i + 1])
            if self.kinds.setdefault(folder, True) is not True:
                raise self.refuse(f"{shown(folder)} is both a file and a folder")
        if rel in self.kinds:
            if self.kinds[rel] and m.isdir():
                return None
            what = "appears twice" if not self.kinds[rel] and not m.isdir() else \
                "is both a file and a folder"
            raise self.refuse(f"member {shown(m.name)} {what}")
        self.kinds[rel] = m.isdir()
        return None if m.isdir() else rel

    def close(self):
        self.tar.close()


def read(path: Path, dest: Path, head: tuple[str, ...], head_cap: dict[str, int],
         declare: Callable[[dict[str, bytes]], dict[str, int] | None]) -> Contents:
    """Read the bundle at `path`: its leading members `head` (head[0] first and required to
    be there, the others optional, in order) into memory, each at most `head_cap[name]`
    bytes; `declare(head)` gives every other member's size (None: nothing else is read); then
    the declared members into `dest`. See the module docstring for what is refused."""
    path = Path(path)
    got: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    contents = Contents(got)
    members = _Members(path)
    try:
        declared: dict[str, int] | None = None
        nxt = 0  # where in `head` the next leading member may be
        for m, rel in members:
            if declared is None:
                if rel in head[nxt:] and (nxt or rel == head[0]):
                    if m.size > head_cap[rel]:
                        raise members.refuse(f"{rel} is {m.size:,} bytes (at most "
                                             f"{head_cap[rel]:,})")
                    got[rel] = _read_member(members, m, m.size)
                    nxt = head.index(rel) + 1
                    continue
                if not got:
                    contents.problems.append(f"{head[0]} is not the bundle's first member")
                    return contents
                declared = _budget(declare(got), dest, members)
                if declared is None:
                    return contents
            if rel not in declared:
                contents.problems.append(f"{rel} is not listed in {head[0]}")
                return contents
            if m.size != declared[rel]:
                contents.problems.append(f"{rel} holds {m.size:,} bytes, not the "
                                         f"{declared[rel]:,} {head[0]} lists")
                return contents
            sizes[rel] = m.size
        if not got:
            contents.problems.append(f"{head[0]} is missing")
            return contents
        if declared is None:
            declared = _budget(declare(got), dest, members)
            if declared is None:
                return contents
        contents.problems += [f"{n} is missing" for n in sorted(set(declared) - set(sizes))]
    finally:
        members.close()
    if not contents.problems:
        contents.files = _extract(path, dest, sizes)
    return contents


def _budget(declared: dict[str, int] | None, dest: Path, members: _Members) -> dict | None:
    """`declared`, after checking that its total fits the caps and the destination's disk."""
    if declared is None:
        return None
    if any(n < 0 for n in declared.values()):
        raise members.refuse("its manifest declares a negative size")
    total = sum(declared.values())
    if total > MAX_TOTAL_BYTES:
        raise members.refuse(f"its manifest declares {total:,} bytes (at most "
                             f"{MAX_TOTAL_BYTES:,})")
    free = shutil.disk_usage(dest).free
    if total > free:
        raise UserError(f"verifying {members.path.name} needs {total:,} bytes in {dest.parent},"
                        f" which has {free:,} free: set TMPDIR to a larger disk")
    return declared


def _read_member(members: _Members, m: tarfile.TarInfo, cap: int) -> bytes:
    try:
        f = members.tar.extractfile(m)
        return f.read(cap) if f else b""
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        raise UserError(f"{members.path} is damaged at {shown(m.name)}: {e}") from None


def _extract(path: Path, dest: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Pass 2: stream each member checked in pass 1 to `dest`, at most its declared size."""
    root = dest.resolve()
    out: dict[str, Path] = {}
    members = _Members(path)
    try:
        for m, rel in members:
            if rel not in sizes:
                continue  # a leading member, already in memory
            if m.size != sizes[rel] or rel in out:
                raise members.refuse(f"{path.name} changed while it was being read")
            target = root.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            left = sizes[rel]
            try:
                src = members.tar.extractfile(m)
                with target.open("wb") as f:
                    while left:
                        chunk = src.read(min(CHUNK, left))
                        if not chunk:
                            raise EOFError(f"{shown(m.name)} ends early")
                        f.write(chunk)
                        left -= len(chunk)
            except (EOFError, zlib.error, tarfile.TarError, gzip.BadGzipFile) as e:
                raise UserError(f"{path} is damaged at {shown(m.name)}: {e}") from None
            except OSError as e:
                raise UserError(f"cannot extract {path.name} into {dest}: "
                                f"{e.strerror or e}") from None
            out[rel] = target
    finally:
        members.close()
    return out

"""Reading a file that comes from elsewhere at a bounded cost.

A small file must not cost gigabytes, and a path must not hang its reader. Every reader of an
outside file (datasets, model.pt, NIR graphs, validation references) goes through here:
- a path is read only when it is a regular file, symlinks followed (a FIFO blocks open()
  forever, /dev/zero never ends, a device may act on being opened);
- what a file declares is checked against a Budget of bytes and numbers BEFORE anything is
  decompressed or allocated: a zip member's size from the zip directory, an .npy header's
  shape × itemsize, an IDX header's dims, an HDF5 dataset's shape × itemsize;
- of an .npz, only the members a reader asks for are opened.
Torch-free (numpy only), so targets/ uses it on a device."""
from __future__ import annotations

import math
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from .errors import UserError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# The zip directory (the list of members) is parsed whole, at ~10x its size in memory: an .npz
# has a handful of members and a ResNet19 model.pt ~30 KiB of directory.
ZIP_DIRECTORY_BYTES = 4 * MiB
SHOWN_NAME = 80  # characters of a name from the file that an error line shows


def size_text(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def shown(name: str) -> str:
    """A name taken from a file, cut so that an error line stays one short line."""
    text = repr(name)
    return text if len(text) <= SHOWN_NAME else text[:SHOWN_NAME - 3] + "..."


class Budget:
    """What reading one thing (a dataset, a model.pt, ...) may cost: bytes as decompressed or
    allocated, and numbers (elements, which grow when converted to float32), summed over every
    size the reading declares."""

    def __init__(self, what: str, max_bytes: int, max_elements: int | None = None):
        self.what, self.max_bytes, self.max_elements = what, max_bytes, max_elements
        self.bytes = self.elements = 0

    def take(self, where: str, nbytes: int, elements: int | None = None) -> None:
        """Count `nbytes` (and `elements`) declared by `where`, or refuse them with one line."""
        if self.bytes + nbytes > self.max_bytes:
            before = f" (on top of {size_text(self.bytes)} before it)" if self.bytes else ""
            raise UserError(f"{where} declares {size_text(nbytes)}{before}, over the "
                            f"{size_text(self.max_bytes)} budget for {self.what}: refused")
        if elements is not None and self.max_elements is not None \
                and self.elements + elements > self.max_elements:
            before = f" (on top of {self.elements:,} before them)" if self.elements else ""
            raise UserError(f"{where} declares {elements:,} numbers{before}, over the "
                            f"{self.max_elements:,}-number budget for {self.what}: refused")
        self.bytes += nbytes
        self.elements += elements or 0


# -- regular files only ------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def regular_size(path: Path, what: str) -> int:
    """The size of `path` if it is a regular file (after symlinks), else one UserError line."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file: refused")
    return st.st_size


def open_regular(path: Path, what: str) -> BinaryIO:
    """`path` opened for reading, refused unless it is a regular file. Opened non-blocking and
    checked again on the descriptor, so a file swapped for a FIFO after the check cannot hang."""
    regular_size(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{what} {path} is {_kind(mode)}, not a regular file: refused")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_exact(stream: BinaryIO, n: int, where: str) -> bytes:
    """Exactly `n` bytes of `stream` (n already budgeted), or a UserError: truncated."""
    data = stream.read(n)
    if len(data) != n:
        raise UserError(f"{where} is truncated: {len(data)} of the {n} bytes its header "
                        "declares")
    return data


# -- zip files (.npz, model.pt) -----------------------------------------------------------------

def _directory_bytes(f: BinaryIO) -> int:
    """The size of a zip's directory as its end record (or zip64 end record) declares it;
    0 when there is no end record (zipfile then says it is not a zip)."""
    end = f.seek(0, os.SEEK_END)
    f.seek(max(0, end - 22 - 0xFFFF))
    tail = f.read()
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) < i + 22:
        return 0
    size = struct.unpack("<I", tail[i + 12:i + 16])[0]
    if i >= 20 and tail[i - 20:i - 16] == b"PK\x06\x07":  # zip64: zipfile reads its record
        f.seek(struct.unpack("<Q", tail[i - 12:i - 4])[0])
        record = f.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            size = struct.unpack("<Q", record[40:48])[0]
    return size


def open_zip(f: BinaryIO, where: str) -> zipfile.ZipFile:
    """A zip whose directory is no larger than ZIP_DIRECTORY_BYTES, or a UserError."""
    try:
        directory = _directory_bytes(f)
        if directory > ZIP_DIRECTORY_BYTES:
            raise UserError(f"{where} declares a zip directory of {size_text(directory)}, over "
                            f"the {size_text(ZIP_DIRECTORY_BYTES)} budget for one: refused")
        f.seek(0)
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as e:
        raise UserError(f"{where} is not a readable zip file ({' '.join(str(e).split())[:120]})") \
            from None


def take_members(z: zipfile.ZipFile, where: str, budget: Budget,
                 names: Iterable[str] | None = None) -> None:
    """Count the decompressed sizes that the zip directory declares for `names` (all members
    by default) against `budget`. Python's zipfile and torch's reader both stop a member at
    its declared size, so this bounds what reading them costs."""
    for info in (z.infolist() if names is None else [z.getinfo(n) for n in names]):
        budget.take(f"{where}: member {shown(info.filename)}", info.file_size)


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}


def _npy_array(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, budget: Budget):
    """One member: its size in the zip directory within `budget`, then its .npy header (the
    first bytes inflated) must declare numbers of exactly that size, before numpy allocates
    the shape the header names."""
    take_members(z, where, budget, [info.filename])
    key = f"{where}: {shown(info.filename[:-4])}"
    with z.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version not in _NPY_HEADERS:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = _NPY_HEADERS[version](m)
        header = m.tell()
    if dtype.hasobject:
        raise UserError(f"{key} holds Python objects (reading them would run pickle): refused")
    count = math.prod(shape)
    if header + count * dtype.itemsize != info.file_size:
        raise UserError(f"{key}: its header declares {count * dtype.itemsize} bytes of data but "
                        f"the zip holds {info.file_size - header}: the file is corrupted")
    budget.take(key, 0, count)
    with z.open(info) as m:
        return np.lib.format.read_array(m, allow_pickle=False)


def npz_arrays(path: Path, what: str, keys: Iterable[str], budget: Budget) -> dict:
    """Those of `keys` that the .npz file holds, as arrays. Each is checked before it is read:
    its .npy header's shape × itemsize against `budget` and against the size the zip directory
    declares for it. Members not asked for are never read."""
    where = f"{what} {path}"
    with open_regular(path, what) as f, open_zip(f, where) as z:
        names = set(z.namelist())
        out = {}
        try:
            for key in keys:
                if f"{key}.npy" in names:
                    out[key] = _npy_array(z, z.getinfo(f"{key}.npy"), where, budget)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError) as e:
            raise UserError(f"{where} is not a readable .npz file "
                            f"({' '.join(str(e).split())[:120]})") from None
        return out

"""Content hashes: of files, of bytes and of arrays. Torch-free, so targets/ can use them on a
device. Every sha256 and fingerprint in the project comes from here."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def arrays_digest(*arrays, length: int = 16) -> str:
    """A short hash of arrays' dtypes, shapes and contents (None entries are skipped); torch
    tensors are accepted through their numpy view."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            continue
        a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def is_file_table(obj) -> bool:
    """Whether `obj` is a manifest's {name: {"sha256": hex, "bytes": int}} table, as artifacts
    and bundles keep them (a hostile manifest must not crash the reader that checks it)."""
    return isinstance(obj, dict) and all(
        isinstance(name, str) and isinstance(e, dict) and isinstance(e.get("sha256"), str)
        and isinstance(e.get("bytes"), int) and not isinstance(e.get("bytes"), bool)
        for name, e in obj.items())

"""Scratch folders in the system temp dir for commands that have no run directory (verify,
package's ORT conversion, signing). Each folder's name carries its process id, so a folder left
by a killed process (SIGKILL skips every cleanup) is removed by the next one that starts."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to clean
        return True
    return True


def clean_stale(kind: str) -> None:
    """Remove `edgeprune-<kind>-<pid>-*` folders whose process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"edgeprune-{kind}-*-*"):
        pid = folder.name[len(f"edgeprune-{kind}-"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) \
                and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def folder(kind: str):
    """A fresh scratch folder, removed on exit (and by the next run if this one is killed)."""
    clean_stale(kind)
    with tempfile.TemporaryDirectory(prefix=f"edgeprune-{kind}-{os.getpid()}-") as d:
        yield Path(d)

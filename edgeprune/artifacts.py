"""The artifact store: one folder per stage output, named by a hash of what produced it.

An artifact's id hashes its stage, its fully resolved config and the ids of its inputs, so the
same inputs give the same id (a rerun finds the artifact and skips the work) and any change gives
a new one. Every stage goes through one protocol, `Store.run(stage, config, inputs, compute)`:
find the artifact, or take its lock, compute it into a temporary folder, add the manifest last
and rename the folder into place, so a half-written artifact is never visible. Several processes
may share a run directory: the per-artifact lock makes the second writer wait and then find the
first one's artifact. Every read checks sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import distributed, faults
from .errors import UserError
from .hashing import file_sha256, is_file_table

SCHEMA = "edgeprune.artifact/1"
MANIFEST = "manifest.json"


def artifact_id(stage: str, config: dict, inputs: list[str]) -> str:
    blob = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def environment() -> dict:
    """Versions that can change a result, recorded in every manifest."""
    from importlib import metadata

    from . import __version__

    env = {"edgeprune": __version__, "python": platform.python_version(),
           "platform": f"{platform.system()}-{platform.machine()}"}
    for pkg in ("torch", "norse", "onnx", "onnxruntime", "numpy"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    env["git_commit"] = _git_commit()
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Artifact:
    path: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    def file(self, name: str) -> Path:
        """The path of one of the artifact's files, after checking its sha256 and size."""
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise UserError(f"artifact {self.path} has no file {name!r}")
        p = self.path / name
        if not p.exists():
            raise UserError(f"{p} is missing (artifact damaged; delete {self.path} and rerun)")
        if p.stat().st_size != entry["bytes"] or file_sha256(p) != entry["sha256"]:
            raise UserError(f"{p} does not match the sha256 in its manifest: the file is "
                            f"corrupted or was modified (delete {self.path} and rerun)")
        return p


def open_artifact(path: Path) -> Artifact:
    """Read an artifact folder (or a file inside one)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise UserError(f"{folder} is not an edgeprune artifact (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{mpath} is unreadable or not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise UserError(f"{mpath} is not an {SCHEMA} manifest")
    for key, kind in (("stage", str), ("id", str), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise UserError(f"{mpath} lacks {key!r} or it is not a {kind.__name__}")
    if not is_file_table(manifest["files"]):
        raise UserError(f"{mpath}: 'files' is not a table of sha256 and sizes")
    for key, kind in (("inputs", list), ("config", dict), ("metrics", dict)):
        if not isinstance(manifest.get(key, kind()), kind):
            raise UserError(f"{mpath}: {key!r} is not a {kind.__name__}")
    return Artifact(folder, manifest)


class Store:
    """A run directory of artifacts: `<root>/<stage>-<id>/`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, stage: str, aid: str) -> Path:
        return self.root / f"{stage}-{aid}"

    def partial(self, stage: str, aid: str) -> Path:
        """Where an unfinished artifact keeps its epoch checkpoint (removed once it is written)."""
        return self.root / ".partial" / f"{stage}-{aid}.pt"

    def find(self, stage: str, aid: str) -> Artifact | None:
        folder = self.folder(stage, aid)
        return open_artifact(folder) if (folder / MANIFEST).exists() else None

    def artifacts(self) -> list[Artifact]:
        if not self.root.is_dir():
            return []
        found = [open_artifact(p) for p in sorted(self.root.iterdir())
                 if p.is_dir() and (p / MANIFEST).exists()]
        return sorted(found, key=lambda a: a.manifest.get("created", ""))

    def writable(self) -> None:
        """Fail early, before any work, when the run directory cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as e:
            raise UserError(f"cannot write to output directory {self.root}: {e.strerror}") from None

    def lock_path(self, stage: str, aid: str) -> Path:
        return self.root / ".locks" / f"{stage}-{aid}.lock"

    def run(self, stage: str, config: dict, inputs: list[str],
            compute: Callable[["Job"], dict], collective: bool = False) -> tuple[Artifact, bool]:
        """The one stage protocol. Returns (artifact, cached): the stored artifact of this
        stage, config and inputs if there is one, else `compute(job)`'s. `compute` writes its
        files into `job.dir` and returns the metrics; it may resume from `job.partial`.

        The artifact's lock is held from the second look to the rename: a process that finds
        it taken waits and then finds the first one's artifact. Holding the lock also means no
        live writer of this artifact exists, so temporaries left by killed ones can go.

        Under torchrun (edgeprune.distributed) rank 0 alone looks, writes and decides; with
        `collective` (a training stage) every rank runs `compute` with it, the others into a
        scratch folder, and the world size joins the id (per-rank BatchNorm statistics make a
        data-parallel run differ from a single process)."""
        w = distributed.world()
        if w.parallel and collective:
            config = {**config, "world_size": w.size}
        aid = artifact_id(stage, config, inputs)
        if not w.parallel:
            return self._run_locked(stage, aid, config, inputs, compute)
        cached = distributed.broadcast(self.find(stage, aid) is not None if w.main else None)
        if not cached:
            if w.main:
                self._run_locked(stage, aid, config, inputs, compute)
            elif collective:
                with tempfile.TemporaryDirectory(prefix=f".{stage}-{aid}-rank{w.rank}-") as d:
                    compute(Job(stage, aid, Path(d), self.partial(stage, aid)))
            distributed.barrier()
        found = self.find(stage, aid)
        if found is None:
            raise UserError(f"rank {w.rank} cannot see {self.folder(stage, aid)}, which rank 0 "
                            "wrote: under torchrun every rank needs the same run directory")
        return found, bool(cached)

    def _run_locked(self, stage: str, aid: str, config: dict, inputs: list[str],
                    compute: Callable[["Job"], dict]) -> tuple[Artifact, bool]:
        from filelock import FileLock  # only writers lock: a device that verifies lacks it

        found = self.find(stage, aid)
        if found:
            return found, True
        self.writable()
        lock = self.lock_path(stage, aid)
        lock.parent.mkdir(exist_ok=True)
        with FileLock(str(lock)):
            found = self.find(stage, aid)
            if found:
                return found, True
            for stale in self.root.glob(f".{stage}-{aid}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            return self._write(stage, aid, config, inputs, compute), False

    def _write(self, stage: str, aid: str, config: dict, inputs: list[str],
               compute: Callable[["Job"], dict]) -> Artifact:
        final = self.folder(stage, aid)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-{aid}-", dir=self.root))
        try:
            metrics = compute(Job(stage, aid, tmp, self.partial(stage, aid)))
            files = {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"schema": SCHEMA, "stage": stage, "id": aid,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "inputs": inputs, "config": config, "metrics": metrics, "files": files,
                        "env": {**environment(), "world_size": distributed.world().size}}
            _write_json(tmp / MANIFEST, manifest)
            faults.reach("artifact-write")
            if final.exists():  # a folder without a manifest (damaged by hand): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            self.partial(stage, aid).unlink(missing_ok=True)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise UserError(f"cannot write artifact to {self.root}: {e.strerror or e}") from None
            raise
        return open_artifact(final)


@dataclass(frozen=True)
class Job:
    """What a stage's compute gets: where to write its files, and where it may keep an epoch
    checkpoint to resume from (removed once the artifact is written)."""

    stage: str
    id: str
    dir: Path
    partial: Path


def _write_json(path: Path, obj) -> None:
    with path.open("w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())

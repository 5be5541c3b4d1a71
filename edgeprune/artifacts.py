"""The artifact store: one folder per stage output, named by a hash of what produced it.

An artifact's id hashes its stage, its fully resolved config and the ids of its inputs, so the
same inputs give the same id (a rerun finds the artifact and skips the work) and any change gives
a new one. Every stage goes through one protocol, `Store.run(stage, config, inputs, compute)`:
find the artifact, or take its lock, compute it into a temporary folder, add the manifest last
and rename the folder into place, so a half-written artifact is never visible. Several processes
may share a run directory: the per-artifact lock makes the second writer wait and then find the
first one's artifact. Every read checks sha256.

Manifests are checked, not trusted. Opening one recomputes its id from its stage, config and
inputs and requires it to equal both `id` and the folder name `<stage>-<id>` (an edited id or
config cannot pass itself off as another artifact), and requires every file it lists to be a
plain name inside the folder. What the checks prove, and what they do not:

- `seal`, the sha256 of the manifest's canonical JSON without the seal, catches any edit made
  without recomputing it (an edited `metrics.test_accuracy`, a flipped `passed`, a changed file
  table) and any damage. Anyone can recompute a sha256, so on its own it proves consistency,
  not origin.
- `input_seals` records, in each artifact, the seal of every input as this process read it
  when the artifact was made. Opening the artifact compares them with its inputs' current seals
  when those inputs are in the same run directory: an input edited after something was made
  from it is detected even when the editor recomputed the input's seal, and covering that too
  means re-sealing the whole chain below it. The newest artifact of a chain has no such witness
  until something is made from it; a bundle's signature is what proves origin.

Manifests without a seal (written by edgeprune before seals existed) are refused with a message
to delete and rerun: they are caches, so rebuilding costs only time, and accepting them would
let anyone remove a seal to dodge the checks.
"""
from __future__ import annotations

import glob
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
from .bounded_read import open_regular, regular_size
from .diskspace import DiskFull, free_bytes, full_error, is_full
from .errors import UserError
from .hashing import bytes_sha256, file_sha256, is_file_table
from .names import plain_name

SCHEMA = "edgeprune.artifact/1"
MANIFEST = "manifest.json"
SEAL = "seal"
INPUT_SEALS = "input_seals"

# id -> seal of every artifact this process opened: what a new artifact records of its inputs
_opened: dict[str, str] = {}


def artifact_id(stage: str, config: dict, inputs: list[str]) -> str:
    blob = json.dumps({"stage": stage, "config": config, "inputs": inputs}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def seal(manifest: dict) -> str:
    """The sha256 of a manifest's canonical JSON, its own seal left out."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return bytes_sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                   default=str).encode())


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
        # a FIFO or device in place of a file would hang or never end the hash: refused first
        if regular_size(p, "artifact file") != entry["bytes"] or file_sha256(p) != entry["sha256"]:
            raise UserError(f"{p} does not match the sha256 in its manifest: the file is "
                            f"corrupted or was modified (delete {self.path} and rerun)")
        return p


def open_artifact(path: Path) -> Artifact:
    """Read an artifact folder (or a file inside one), checking its manifest (see the module's
    docstring)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise UserError(f"{folder} is not an edgeprune artifact (no {MANIFEST})")
    manifest = _read_manifest(mpath)
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise UserError(f"{mpath} is not an {SCHEMA} manifest")
    for key, kind in (("stage", str), ("id", str), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise UserError(f"{mpath} lacks {key!r} or it is not a {kind.__name__}")
    if not is_file_table(manifest["files"]):
        raise UserError(f"{mpath}: 'files' is not a table of sha256 and sizes")
    for key, kind in (("inputs", list), ("config", dict), ("metrics", dict),
                      (INPUT_SEALS, dict)):
        if not isinstance(manifest.get(key, kind()), kind):
            raise UserError(f"{mpath}: {key!r} is not a {kind.__name__}")
    for name in manifest["files"]:
        plain_name(name, f"{mpath}: a file entry")
    _check_identity(mpath, manifest)
    _check_inputs(mpath, manifest)
    _opened[manifest["id"]] = manifest[SEAL]
    return Artifact(folder, manifest)


MANIFEST_BYTES = 64 * 1024 * 1024  # a manifest is KiBs; a bundle's lineage of them, a few MiB


def _read_manifest(mpath: Path):
    if regular_size(mpath, "manifest") > MANIFEST_BYTES:
        raise UserError(f"{mpath} is over {MANIFEST_BYTES >> 20} MiB: not a manifest edgeprune "
                        "wrote")
    try:
        with open_regular(mpath, "manifest") as f:
            return json.loads(f.read(MANIFEST_BYTES + 1))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{mpath} is unreadable or not JSON: {e}") from None


def _edited(mpath: Path, what: str) -> UserError:
    return UserError(f"manifest edited or damaged: {mpath} {what} (delete {mpath.parent} and "
                     "rerun to rebuild it)")


_UNSEALED = ("does not match its seal: its metrics, config, files or lineage were changed after "
             "it was written")


def _check_identity(mpath: Path, manifest: dict) -> None:
    """The id is the hash of what made the artifact, the folder is named by it, and the
    manifest is the one that was sealed."""
    stage, aid = manifest["stage"], manifest["id"]
    inputs = manifest.get("inputs", [])
    if not all(isinstance(i, str) for i in inputs):
        raise _edited(mpath, "has inputs that are not artifact ids")
    expected = artifact_id(stage, manifest.get("config", {}), inputs)
    if aid != expected:
        raise _edited(mpath, f"says id {aid[:20]!r}, but its stage, config and inputs hash "
                             f"to {expected}")
    folder = mpath.parent.resolve().name  # `show .` from inside the folder names it too
    if folder != f"{stage}-{aid}":
        raise _edited(mpath, f"is in folder {folder[:60]!r}, not {stage}-{aid}")
    if not isinstance(manifest.get(SEAL), str):
        raise UserError(f"{mpath} has no seal: it was written by an older edgeprune; delete "
                        f"{mpath.parent} and rerun to rebuild it")
    if manifest[SEAL] != seal(manifest):
        raise _edited(mpath, _UNSEALED)


def _check_inputs(mpath: Path, manifest: dict) -> None:
    """Each input still in the run directory must be the one this artifact was made from."""
    for pid, recorded in manifest.get(INPUT_SEALS, {}).items():
        if not isinstance(recorded, str) or pid not in manifest.get("inputs", []):
            raise _edited(mpath, f"has a malformed {INPUT_SEALS} entry")
        plain_name(pid, f"{mpath}: an input id")
        for parent in mpath.parent.resolve().parent.glob(f"*-{glob.escape(pid)}/{MANIFEST}"):
            try:
                found = json.loads(parent.read_text())
                current = seal(found)
            except (OSError, ValueError, AttributeError):
                continue  # a damaged input is refused when it is opened itself
            if found.get(SEAL) != current:
                raise _edited(parent, _UNSEALED)
            if current != recorded:
                raise _edited(parent, f"changed after {manifest['stage']} {manifest['id']} was "
                                      "made from it (its seal differs from the one recorded "
                                      "there)")


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
        for own in (self.root / ".locks", self.root / ".partial"):
            if own.exists() and not own.is_dir():
                raise UserError(f"{own} is a file, but edgeprune keeps a folder there: move it "
                                "away and rerun")

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
        lock.parent.mkdir(exist_ok=True)  # `writable` refused a file in its place
        with FileLock(str(lock)):
            found = self.find(stage, aid)
            if found:
                return found, True
            for stale in self.root.glob(f".{stage}-{aid}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for stale in (self.root / ".partial").glob(f".{stage}-{aid}.pt.*.tmp"):
                stale.unlink(missing_ok=True)  # a checkpoint write that was killed
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
                        INPUT_SEALS: {i: _opened[i] for i in inputs if i in _opened},
                        "env": {**environment(), "world_size": distributed.world().size}}
            # sealed as it will read back: JSON turns tuples into lists, objects into strings
            manifest = json.loads(json.dumps(manifest, default=str))
            manifest[SEAL] = seal(manifest)
            _write_json(tmp / MANIFEST, manifest)
            faults.reach("artifact-write")
            if final.exists():  # a folder without a manifest (damaged by hand): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            self.partial(stage, aid).unlink(missing_ok=True)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_full(e):
                where = final / Path(e.filename).name if e.filename else final
                raise full_error(where, free=free_bytes(self.root), e=e) from None
            if isinstance(e, DiskFull):  # name the file where it would have ended up
                raise DiskFull(str(e).replace(str(tmp), str(final))) from None
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

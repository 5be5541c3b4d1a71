"""Hostile input to the core, through the CLI as a user would type it: hand-edited manifests, a
full disk, absurd options. Each is exit 2 with one line on stderr, leaves nothing behind, and
(for the options) stays under a stated memory cap."""
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgeprune.artifacts import seal
from edgeprune.diskspace import write_bytes
from edgeprune.errors import UserError
from edgeprune.names import plain_name

from .conftest import ROOT, run_cli

TINY = ["--data", "digits", "--width", "0.25", "--timesteps", "2", "--train-subset", "64",
        "--epochs", "1", "--batch-size", "32"]
CHAIN = ["compress", *TINY, "--method", "imp", "--sparsity", "0.5", "--round-epochs", "1",
         "--retrain-epochs", "1", "--latency-budget-ms", "10000", "--no-dense", "--json"]
MEMORY_CAP = 3 << 30  # RLIMIT_AS of the processes given absurd options
RSS_CAP = 1 << 30  # what such a process may have touched before it refused


def _one_line(r, code: int, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A small compressed run: train → rounds → search → retrain → export → validate."""
    out = tmp_path_factory.mktemp("chain")
    r = run_cli(*CHAIN, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, json.loads(r.stdout)


def _copy(chain, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(chain[0], run)
    return run


def _edit(run: Path, stage: str, change, reseal: bool = False) -> Path:
    path = next(run.glob(f"{stage}-*/manifest.json"))
    manifest = json.loads(path.read_text())
    change(manifest)
    if reseal:  # what an editor who knows the format does
        manifest["seal"] = seal(manifest)
    path.write_text(json.dumps(manifest, indent=2))
    return path


# -- manifests are checked, not trusted ------------------------------------------------------

def test_an_edited_metric_is_refused_by_ls_show_and_compress(chain, tmp_path):
    run = _copy(chain, tmp_path)
    path = _edit(run, "retrain", lambda m: m["metrics"].update(test_accuracy=0.999))
    before = _files(run)
    for args in (["ls", run], ["ls", run, "--json"], ["show", path.parent],
                 ["compress", *CHAIN[1:], "--out", run]):
        r = run_cli(*args)
        _one_line(r, 2, "manifest edited or damaged", "does not match its seal")
        assert "0.999" not in r.stdout
    assert _files(run) == before


def test_a_resealed_edit_of_a_parent_is_caught_by_its_child(chain, tmp_path):
    run = _copy(chain, tmp_path)
    path = _edit(run, "retrain", lambda m: m["metrics"].update(test_accuracy=0.999), reseal=True)
    r = run_cli("ls", run)
    line = _one_line(r, 2, "manifest edited or damaged", path.parent.name, "changed after export")
    assert "0.999" not in r.stdout and "delete" in line
    r = run_cli("package", run, "--out", tmp_path / "bundles")
    _one_line(r, 2, "changed after")
    assert not (tmp_path / "bundles").exists()


def test_a_flipped_validation_verdict_is_not_packaged(chain, tmp_path):
    run = _copy(chain, tmp_path)
    _edit(run, "validate", lambda m: m["metrics"].update(passed=not m["metrics"]["passed"]))
    r = run_cli("package", run, "--out", tmp_path / "bundles")
    _one_line(r, 2, "does not match its seal")
    assert not (tmp_path / "bundles").exists()


def test_a_changed_id_or_folder_name_is_refused(chain, tmp_path):
    run = _copy(chain, tmp_path)
    train = next(run.glob("train-*"))
    _edit(run, "train", lambda m: m.update(id="0123456789ab"), reseal=True)
    _one_line(run_cli("show", train), 2, "says id '0123456789ab'", "hash to " + train.name[6:])
    run = tmp_path / "renamed"
    shutil.copytree(chain[0], run)
    train = next(run.glob("train-*"))
    moved = train.with_name("train-0123456789ab")
    train.rename(moved)
    _one_line(run_cli("show", moved), 2, "is in folder 'train-0123456789ab'", train.name)
    _one_line(run_cli("ls", run), 2, "is in folder")  # listing the run meets it too


@pytest.mark.parametrize("name", ["../../../secret.onnx", "/etc/passwd", "sub/model.onnx", "..",
                                  "a\x00b", "x" * 300])
def test_a_file_entry_that_is_not_a_plain_name_is_refused(chain, tmp_path, name):
    run = _copy(chain, tmp_path)
    path = _edit(run, "export", lambda m: m["files"].update(
        {name: m["files"]["model.onnx"]}), reseal=True)
    # the id hashes the config, not the files: the manifest is otherwise consistent
    line = _one_line(run_cli("show", path.parent), 2, "a file entry")
    assert len(line) < 400


def test_a_manifest_without_a_seal_is_refused_with_what_to_do(chain, tmp_path):
    run = _copy(chain, tmp_path)
    train = next(run.glob("train-*"))
    _edit(run, "train", lambda m: m.pop("seal"))
    _one_line(run_cli("show", train), 2, "no seal", "older edgeprune", "delete")


def test_seals_leave_ids_alone(chain):
    """Every id is the hash of stage, config and inputs alone: seals ride beside it."""
    from edgeprune.artifacts import Store, artifact_id

    arts = Store(chain[0]).artifacts()
    assert {a.stage for a in arts} >= {"train", "round", "search", "retrain", "export",
                                       "validate"}
    for a in arts:
        m = a.manifest
        assert a.id == artifact_id(a.stage, m["config"], m["inputs"])
        assert m["seal"] == seal(m)
        assert set(m["input_seals"]) <= set(m["inputs"])
    children = [a for a in arts if a.manifest["inputs"]]
    assert children and all(a.manifest["input_seals"] for a in children)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "/abs", "nul\x00", "tab\t",
                                  "é", "a b", "x" * 256, 7])
def test_plain_name_refuses(name):
    with pytest.raises(UserError, match="what it was"):
        plain_name(name, "what it was")


@pytest.mark.parametrize("name", ["model.onnx", "x86_64.report.json", "..hidden", "c-x86_64.runner", "x" * 255])
def test_plain_name_accepts(name):
    assert plain_name(name, "x") == name


# -- absurd options --------------------------------------------------------------------------

def _capped(args):
    """The CLI in a subprocess under RLIMIT_AS = MEMORY_CAP; (CompletedProcess, its peak RSS
    in bytes, from wait4)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT,
                             stdout=out, stderr=err, text=True, preexec_fn=cap,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (subprocess.CompletedProcess(args, p.returncode, out.read(), err.read()),
                usage.ru_maxrss * 1024)


@pytest.mark.parametrize("args, words", [
    (["train", "--timesteps", "100000"], ["this needs ~", "T 100000"]),
    (["train", "--width", "1000"], ["this needs ~", "width 1000"]),
    (["compress", "--width", "1000"], ["this needs ~", "width 1000"]),
    (["train", "--seed", str(2**64)], ["--seed"]),
    (["compress", "--train-subset", "1"], ["--train-subset must be at least 2"]),
])
def test_absurd_options_are_refused_up_front(args, words, tmp_path):
    out = tmp_path / "out"
    r, peak = _capped([*args, "--data", "digits", "--epochs", "1", "--out", out])
    _one_line(r, 2, *words)
    assert peak < RSS_CAP, peak
    assert not [p for p in _files(out) if not p.startswith(".")], _files(out)


def test_a_locks_file_in_the_run_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".locks").write_text("not a folder")
    _one_line(run_cli("train", *TINY, "--out", out), 2, ".locks is a file")
    assert _files(out) == {".locks"}


# -- a full disk -------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only: mount needs the privilege)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Fill the disk but `leave` bytes; returns the filler."""
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _no_temporaries(root: Path) -> None:
    left = [p for p in _files(root) if p.endswith(".tmp") or Path(p).name.startswith(
        (".train-", ".export-", ".round-", ".search-", ".retrain-", ".validate-"))]
    assert not left, left


def test_training_on_a_full_disk_is_one_line_and_the_rerun_finishes(small_disk):
    run = small_disk / "run"
    filler = _fill(small_disk, 8 << 10)
    r = run_cli("train", *TINY, "--out", run)
    _one_line(r, 2, "cannot write", "no space left on the device", "bytes")
    _no_temporaries(run)
    assert not list(run.glob("train-*"))
    filler.unlink()
    r = run_cli("train", *TINY, "--out", run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    _no_temporaries(run)


def test_export_on_a_full_disk_is_one_line_not_a_crash(small_disk):
    run = small_disk / "run"
    r = run_cli("train", *TINY, "--out", run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    model = json.loads(r.stdout)["model"]
    r = run_cli("export", model, "--out", run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    folder = Path(json.loads(r.stdout)["path"])
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    shutil.rmtree(folder)
    assert sizes["model.nir"] > 64 << 10
    # room for nothing; then for every file but the NIR (h5py used to segfault there, exit
    # 139, and a NIR that failed to write was skipped, leaving an artifact without it)
    room = sum(n for name, n in sizes.items() if name != "model.nir") + (48 << 10)
    for leave, named in ((4 << 10, folder.name), (room, "model.nir")):
        filler = _fill(small_disk, leave)
        r = run_cli("export", model, "--out", run)
        _one_line(r, 2, "no space left on the device", named)
        _no_temporaries(run)
        assert not list(run.glob("export-*"))
        filler.unlink()
    r = run_cli("export", model, "--out", run)
    assert r.returncode == 0 and (folder / "model.nir").exists(), r.stderr[-2000:]


def test_the_write_itself_meeting_a_full_disk_leaves_nothing(small_disk, monkeypatch):
    """Past the free-space check (a quota, or a race with another writer): the ENOSPC of the
    write is the same one line, and the temporary file goes."""
    import edgeprune.diskspace as diskspace

    _fill(small_disk, 4 << 10)
    monkeypatch.setattr(diskspace, "free_bytes", lambda _p: None)
    with pytest.raises(diskspace.DiskFull, match=r"cannot write .*big: no space left.*needs "
                                                 r"1,048,576 bytes"):
        write_bytes(small_disk / "big", b"x" * (1 << 20))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_stale_checkpoint_temporary_is_removed_by_the_next_run(tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", *TINY, "--out", run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    folder = Path(json.loads(r.stdout)["model"]).parent
    stale = run / ".partial" / f".{folder.name}.pt.99999.tmp"  # a write killed mid-way
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    shutil.rmtree(folder)
    r = run_cli("train", *TINY, "--out", run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not stale.exists()


@pytest.mark.parametrize("args, words", [
    (["ls", "{run}"], ["cannot write to standard output"]),
    (["ls", "{run}", "--json"], ["cannot write to standard output"]),
    (["show", "{art}"], ["cannot write to standard output"]),
    (["show", "{art}", "--json"], ["cannot write to standard output"]),
    (["--help"], []),  # click writes and flushes the help itself: the file is not known
])
def test_stdout_on_a_full_device(chain, args, words):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    art = next(chain[0].glob("train-*"))
    args = [a.format(run=chain[0], art=art) for a in args]
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    _one_line(r, 2, *words, "no space left on the device")

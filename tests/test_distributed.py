"""Data-parallel runs under torchrun (gloo, 2 CPU processes): the same search as one process
with the same global batch, identical results on both ranks, one writer, exact resume."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _torchrun(*args, env=None, timeout=300):
    return subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, env=env or ENV, timeout=timeout)


def _search(out, launcher):
    out.mkdir()
    script = [str(ROOT / "tests" / "ddp_search.py"), str(out), str(out / "runs")]
    if launcher == "torchrun":
        r = _torchrun(*script)
    else:
        r = subprocess.run([sys.executable, *script], cwd=ROOT, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def test_search_under_torchrun_matches_one_process(tmp_path):
    (single,) = _search(tmp_path / "one", "python")
    ranks = _search(tmp_path / "two", "torchrun")
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # identical masks, ids, metrics on each rank
    r = ranks[0]
    assert r["world_size"] == 2 and r["env_world_size"] == 2 and single["env_world_size"] == 1
    assert r["ids"] != single["ids"]  # the world size is part of a training artifact's id
    # Same global batch, so the same gradients up to per-rank BatchNorm statistics: the
    # sparsity is exact, accuracies agree within a few test images.
    assert r["sparsity"] == single["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert abs(r["dense_accuracy"] - single["dense_accuracy"]) <= 0.03, (r, single)
    assert abs(r["accuracy"] - single["accuracy"]) <= 0.03, (r, single)
    # one writer: one artifact per stage in the shared run directory
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "two" / "runs").iterdir()
                    if not p.name.startswith("."))
    assert stages.count("train") == 1 and stages.count("retrain") == 1


def test_cli_under_torchrun_prints_once_and_resumes_after_a_kill(tmp_path):
    args = ["-m", "cli", "train", "--data", "digits", "--train-subset", "512", "--epochs", "3",
            "--width", "0.5", "-T", "2", "--json"]
    ref = _torchrun(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    lines = [line for line in ref.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone speaks
    first = json.loads(lines[0])
    # killed in epoch 2 on every rank, then the same command continues from epoch 1's checkpoint
    killed = _torchrun(*args, "--out", tmp_path / "run",
                       env={**ENV, "EDGEPRUNE_CRASH_AT": "step:12"})
    assert killed.returncode != 0
    assert list((tmp_path / "run" / ".partial").glob("train-*.pt"))
    again = _torchrun(*args, "--out", tmp_path / "run")
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads(next(line for line in again.stdout.splitlines() if line.startswith("{")))
    assert second["id"] == first["id"]
    assert second["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]
    assert second["metrics"]["test_loss"] == first["metrics"]["test_loss"]

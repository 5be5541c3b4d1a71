import json
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from edgeprune import checkpoint

import pipeline
from edgeprune.artifacts import Store, artifact_id, open_artifact
from edgeprune.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from edgeprune.errors import UserError


def test_id_depends_on_stage_config_and_inputs():
    a = artifact_id("train", {"x": 1, "y": [1, 2]}, [])
    assert a == artifact_id("train", {"y": [1, 2], "x": 1}, [])  # key order is irrelevant
    assert a != artifact_id("train", {"x": 2, "y": [1, 2]}, [])
    assert a != artifact_id("search", {"x": 1, "y": [1, 2]}, [])
    assert a != artifact_id("train", {"x": 1, "y": [1, 2]}, ["abc"])


def test_manifest_contract(digits_model):
    man = json.loads((digits_model.path / "manifest.json").read_text())
    for key in ("schema", "stage", "id", "created", "inputs", "config", "metrics", "files", "env"):
        assert key in man
    for key in ("edgeprune", "python", "torch", "norse", "onnx", "onnxruntime", "platform"):
        assert key in man["env"]
    assert set(man["files"]) == {"model.pt", "history.jsonl", "snapshots.safetensors"}
    assert man["config"]["model"]["neuron"]["tau_mem_inv"] == 0.75


def test_model_pt_is_self_describing_and_pickle_free(digits_model):
    path = digits_model.file("model.pt")
    blob = torch.load(path, weights_only=True)  # no code is unpickled
    spec = blob["spec"]
    for key in ("arch", "neuron", "timesteps", "encoding", "input_shape", "num_classes",
                "class_names", "mean", "std"):
        assert key in spec
    _, model = checkpoint.load(path)
    assert sum(p.numel() for p in model.parameters()) == digits_model.metrics["parameters"]


def test_tampered_file_is_detected(digits_model, tmp_path):
    import shutil
    copy = tmp_path / "copy" / digits_model.path.name  # the folder name is part of the check
    shutil.copytree(digits_model.path, copy)
    raw = bytearray((copy / "model.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="model.pt does not match the sha256"):
        open_artifact(copy).file("model.pt")


def _train(store, epochs, seed=0):
    return pipeline.train(store, DataConfig("digits", train_subset=200),
                          ModelConfig(width=0.5, timesteps=2), TrainConfig(epochs=epochs),
                          RunConfig(seed=seed))


def test_rerun_is_cache_hit_and_change_makes_new_id(tmp_path):
    store = Store(tmp_path)
    a, cached_a = _train(store, 1)
    mtime = (a.path / "model.pt").stat().st_mtime_ns
    b, cached_b = _train(store, 1)
    assert not cached_a and cached_b and a.id == b.id
    assert (b.path / "model.pt").stat().st_mtime_ns == mtime  # not rewritten
    c, cached_c = _train(store, 2)
    assert not cached_c and c.id != a.id
    assert len(store.artifacts()) == 2


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(tmp_path)

    def boom(job):
        (job.dir / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.run("train", {}, [], boom)
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # no artifact, no temporary
    assert store.artifacts() == []


# -- concurrency: one run directory shared by several processes ------------------------------

def _slow_writer(root, marker, hold, queue):
    """A process computing one artifact: counts its computes in `marker`, takes `hold` s."""
    import time

    def compute(job):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        (job.dir / "out.txt").write_text("done")
        time.sleep(hold)
        return {"pid": os.getpid()}

    art, cached = Store(root).run("train", {"k": 1}, [], compute)
    queue.put((art.id, cached, art.metrics["pid"]))


def test_two_writers_of_one_artifact_compute_it_once(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    marker = tmp_path / "computes"
    procs = [ctx.Process(target=_slow_writer, args=(tmp_path / "run", marker, 1.5, q))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = sorted(q.get(timeout=5) for _ in procs)
    assert all(p.exitcode == 0 for p in procs)
    assert len(marker.read_text().splitlines()) == 1  # the second waited and found it
    assert results[0][0] == results[1][0] and {r[1] for r in results} == {False, True}
    assert results[0][2] == results[1][2]  # both report the first writer's artifact


def test_killed_writer_is_cleaned_by_the_next_and_live_ones_are_not(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    root, marker = tmp_path / "run", tmp_path / "computes"
    victim = ctx.Process(target=_slow_writer, args=(root, marker, 60, q))
    victim.start()
    deadline = time.time() + 30
    while time.time() < deadline and not marker.exists():
        time.sleep(0.05)
    temps = list(root.glob(".train-*"))
    assert len(temps) == 1  # the live writer's temporary
    # a reader meanwhile sees no artifact, not a half-written one
    assert Store(root).artifacts() == [] and Store(root).find("train", "x") is None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert temps[0].exists()  # left behind by the dead writer
    _slow_writer(root, marker, 0, q)
    aid, cached, pid = q.get(timeout=5)
    assert not cached and pid == os.getpid()
    assert not temps[0].exists() and not list(root.glob(".train-*"))
    assert open_artifact(root / f"train-{aid}").file("out.txt").read_text() == "done"

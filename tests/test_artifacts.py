import json

import pytest
import torch

from edgeprune import checkpoint, stages
from edgeprune.artifacts import Store, artifact_id, open_artifact
from edgeprune.errors import UserError
from edgeprune.neurons import NeuronParams
from edgeprune.training import TrainConfig


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
    copy = tmp_path / "copy"
    shutil.copytree(digits_model.path, copy)
    raw = bytearray((copy / "model.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="model.pt does not match the sha256"):
        open_artifact(copy).file("model.pt")


def _train(store, epochs, seed=0):
    return stages.train(store, stages.DataConfig("digits", train_subset=200), "convnet", 0.5,
                        "avg", 2, "direct", NeuronParams(), TrainConfig(epochs=epochs), seed=seed)


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

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        store.write("train", "abc", config={}, inputs=[], metrics={}, write_files=boom)
    assert list(tmp_path.iterdir()) == []

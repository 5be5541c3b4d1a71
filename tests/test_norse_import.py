"""A Norse model written outside the project (tests/user_models/norse_digits.py), trained with
the user's own plain PyTorch loop, goes through import -> search -> retrain -> export."""
import json
import sys
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune import data as datalib, tensorfile
from edgeprune.artifacts import Store
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec
import pipeline
from edgeprune.config import (DataConfig, ExportConfig, ImportConfig, RetrainConfig,
                              EarlyTimeSettings, ImpSettings, SearchConfig)
from edgeprune.importers.norse import user_steps
from edgeprune.stage_inputs import dataset_for, open_model
from edgeprune.retrain_stage import retrain
from edgeprune.search.search_stage import search
from export.export_stage import export
from tests.conftest import assert_compress_parity, run_cli

USER = Path(__file__).parent / "user_models" / "norse_digits.py"
T = 4


def _user_module(name):
    sys.path.insert(0, str(USER.parent))
    try:
        import norse_digits
    finally:
        sys.path.remove(str(USER.parent))
    return getattr(norse_digits, name)()


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    """The user's model trained the Norse way: SequentialState stepped T times per batch."""
    from tests.user_models.norse_digits import train_the_norse_way

    torch.manual_seed(0)
    model = train_the_norse_way(_user_module("model"), datalib.load("digits"), T, images=640)
    path = tmp_path_factory.mktemp("user") / "weights.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _import(store, model_def, weights, data="none", allow_pickle=False, **cfg):
    return pipeline.import_model(store, model_def, weights, ImportConfig(**cfg), DataConfig(data),
                                 allow_pickle)


@pytest.fixture(scope="module")
def imported(trained_weights, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("runs"))
    art, cached = _import(store, f"{USER}:model", trained_weights[0], timesteps=T,
                               data="digits")
    assert not cached
    return store, art


def test_import_rebuilds_the_users_model_exactly(imported, trained_weights):
    store, art = imported
    m = art.metrics
    assert m["parity_max_abs_diff"] < 1e-5 and m["layers"] == 10
    assert m["test_accuracy"] > 0.3  # trained (chance is 0.1), measured by our evaluate
    # independent check: the saved model.pt, loaded without the user's code, stepped one
    # timestep at a time (the streaming path) against the user's module
    mi = open_model(art.path / "model.pt")
    assert mi.spec.arch == "sequential" and mi.data_config.name == "digits"
    kinds = [d["type"] for d in mi.spec.layers]
    assert kinds == ["conv2d", "bn2d", "lif", "avgpool2d", "conv2d", "bn2d", "lif", "flatten",
                     "linear", "li"]
    x = datalib.load("digits").x_test[:100].float()
    ref = user_steps(trained_weights[1], [x] * T)
    states = mi.model.eval().initial_state(x)
    with torch.no_grad():
        for t in range(T):
            y, states = mi.model.step(x, states)
            assert float((y - ref[t]).abs().max()) < 1e-5
    again, cached = _import(store, f"{USER}:model", trained_weights[0], timesteps=T,
                                 data="digits")
    assert cached and again.id == art.id


def test_search_retrain_export_chain_gives_a_validated_onnx(imported):
    store, art = imported
    dense = open_model(art.path / "model.pt")
    dcfg, ds = dataset_for(dense, DataConfig())
    cfg = SearchConfig(method="et-imp", sparsity=0.5, imp=ImpSettings(0.5), round_epochs=1,
                       et=EarlyTimeSettings(epochs=0, batch=64))
    ticket, _ = search(store, dense, dcfg, ds, cfg)
    assert abs(ticket.metrics["sparsity"] - 0.5) < 0.01
    # No early snapshots come with an import: the ticket restarts from the imported
    # (pre-trained) weights themselves; --rewind-epoch 0 asks for a fresh initialization.
    assert ticket.metrics["rewind_epoch"] == "given"
    rewind = tensorfile.load(ticket.file("rewind.safetensors"))
    own = dense.model.state_dict()
    assert rewind.keys() == own.keys() and all(torch.equal(rewind[k], own[k]) for k in own)
    fresh, _ = search(store, dense, dcfg, ds, replace(cfg, method="imp", rewind_epoch=0))
    assert fresh.metrics["rewind_epoch"] == 0
    first = next(k for k in own if k.endswith("weight"))
    assert not torch.equal(tensorfile.load(fresh.file("rewind.safetensors"))[first], own[first])
    # two epochs must keep it alive, or the export check below would compare a silent network
    out, _ = retrain(store, dense, ticket, dcfg, ds, RetrainConfig(epochs=2))
    assert out.metrics["sparsity"] >= 0.49 and out.metrics["test_accuracy"] > 0.5
    assert min(out.metrics["spike_rate"].values()) > 0.01
    exp, _ = export(store, out, ExportConfig(outputs="all", probe=64))
    m = exp.metrics
    assert set(m["parity"]) == {"model.onnx", "model.step.onnx", "model.int8.onnx"}
    assert m["compaction"]["applied"] and m["compaction"]["check"]["spike_mismatches"] == 0
    assert m["max_abs_diff"] < 1e-4 and m["prediction_agreement"] == 1.0
    assert m["spike_mismatches_unexplained"] == 0 and m["states"] == 4  # 2 LIF + LI (v, i)
    assert m["parity"]["model.onnx"]["spike_mismatches_per_layer"].keys() == {"spikes.body.0",
                                                                              "spikes.body.4"}
    assert "synaptic current" in m["nir"]  # LICell's current: NIR skipped, with the reason


def test_current_free_readout_exports_to_nir_and_matches(tmp_path):
    torch.manual_seed(1)
    user = _user_module("box_readout")
    with torch.no_grad():  # non-trivial BN statistics so folding is exercised
        user[1].running_mean.uniform_(-0.5, 0.5)
        user[1].running_var.uniform_(0.5, 2.0)
        user[1].weight.uniform_(0.5, 3.0)
    torch.save(user.state_dict(), tmp_path / "w.pt")
    store = Store(tmp_path / "runs")
    art, _ = _import(store, f"{USER}:box_readout", tmp_path / "w.pt", timesteps=6,
                          input_shape=(1, 8, 8), num_classes=10)
    assert art.metrics["parity_max_abs_diff"] < 1e-5 and "test_accuracy" not in art.metrics
    exp, _ = export(store, art, ExportConfig(probe=64, nir=True))
    p = exp.metrics["parity"]["model.nir"]
    assert p["max_abs_diff"] < 1e-5 and p["spike_mismatches"] == 0


def test_spec_of_builtin_archs_is_unchanged():
    d = ModelSpec().to_dict()
    assert "layers" not in d and ModelSpec.from_dict(d) == ModelSpec()


@pytest.mark.parametrize("func, words", [
    ("unsupported", ["layer 1", "ReLU"]),
    ("lif_with_leak", ["layer 2", "LIFCell", "v_leak"]),
    ("plain_torch", ["no spiking layer"]),
    ("not_a_module", ["int", "nn.Module"]),
    ("missing_function", ["no function"]),
])
def test_unusable_definitions_are_user_errors(func, words, tmp_path):
    torch.save({}, tmp_path / "w.pt")
    with pytest.raises(UserError) as e:
        _import(Store(tmp_path), f"{USER}:{func}", tmp_path / "w.pt", input_shape=(1, 8, 8),
                     num_classes=10)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_weights_that_do_not_fit_and_missing_files(tmp_path):
    torch.save({"0.weight": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(UserError, match="does not fit"):
        _import(Store(tmp_path), f"{USER}:model", tmp_path / "w.pt", input_shape=(1, 8, 8),
                     num_classes=10)
    with pytest.raises(UserError, match="does not exist"):
        _import(Store(tmp_path), f"{tmp_path}/nope.py:model", tmp_path / "w.pt",
                     input_shape=(1, 8, 8), num_classes=10)


class Bomb:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": Bomb(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="--allow-pickle") as e:
        _import(Store(tmp_path / "runs"), f"{USER}:model", tmp_path / "evil.pt",
                     input_shape=(1, 8, 8), num_classes=10)
    assert "\n" not in str(e.value) and not marker.exists()
    r = run_cli("import-model", "--model-def", f"{USER}:model", "--state-dict",
                tmp_path / "evil.pt", "--out", tmp_path / "runs")
    assert r.returncode == 2 and "--allow-pickle" in r.stderr and not marker.exists()


def test_allow_pickle_accepts_a_pickled_module_without_a_definition(tmp_path):
    # Norse cells cannot be pickled (NOTES.md), so a pickled torch-only module stands in: it is
    # taken as the model (no --model-def asked for) and then refused for having no neurons.
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), tmp_path / "whole.pt")
    with pytest.raises(UserError, match="--allow-pickle"):
        _import(Store(tmp_path), None, tmp_path / "whole.pt", input_shape=(1, 8, 8),
                     num_classes=10)
    with pytest.raises(UserError, match="no spiking layer"):
        _import(Store(tmp_path), None, tmp_path / "whole.pt", input_shape=(1, 8, 8),
                     num_classes=10, allow_pickle=True)
    # a checkpoint dict with non-tensor objects in it loads with --allow-pickle only
    user = _user_module("box_readout")
    torch.save({"state_dict": user.state_dict(), "args": Namespace(lr=0.1)}, tmp_path / "ck.pt")
    art, _ = _import(Store(tmp_path / "r"), f"{USER}:box_readout", tmp_path / "ck.pt",
                          input_shape=(1, 8, 8), num_classes=10, allow_pickle=True)
    assert art.metrics["parity_max_abs_diff"] < 1e-5


def test_cli_import_model_json(tmp_path):
    torch.save(_user_module("box_readout").state_dict(), tmp_path / "w.pt")
    r = run_cli("import-model", "--model-def", f"{USER}:box_readout", "--state-dict",
                tmp_path / "w.pt", "-T", "3", "--data", "none", "--input-shape", "1,8,8",
                "--num-classes", "10", "--out", tmp_path / "runs", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stage"] == "import" and Path(out["model"]).exists()
    assert out["metrics"]["parity_max_abs_diff"] < 1e-5
    assert np.isfinite(out["metrics"]["parameters"])


def test_compress_takes_a_model_def_to_a_validated_onnx(trained_weights, tmp_path):
    """The headline command with the user's own definition: import, search, retrain, export and
    validate on the default targets (ONNX Runtime and, with a compiler, the C runtime) in one
    call. ONNX Runtime runs PyTorch's float operations; the C runtime sums in its own order, so
    a potential within rounding of the threshold may flip one spike: same class, but such an
    input's logits may move by a weight."""
    r = run_cli("compress", "--model-def", f"{USER}:model", "--state-dict", trained_weights[0],
                "-T", str(T), "--data", "digits", "--sparsity", "0.5", "--round-epochs", "1",
                "--retrain-epochs", "2", "--latency-budget-ms", "10000", "--out", tmp_path,
                # one round and two retraining epochs: the gates are tested elsewhere
                "--max-accuracy-drop", "100", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "imported" in out["artifacts"] and out["summary"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert out["summary"]["validation"]["passed"]
    assert_compress_parity(out)

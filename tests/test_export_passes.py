"""The export stage as a declared list of passes (export/passes.py): each pass is handed only
the config it declares, runs when it applies, checks itself, and the stage records every pass
while keeping the metrics that reports read."""
import copy
import dataclasses

import pytest
import torch

from edgeprune import checkpoint
from edgeprune.artifacts import Store
from edgeprune.config import ExportConfig
from edgeprune.errors import GateFailed
from export import passes
from export.onnx_files import STEP, UNROLLED
from export.export_stage import export

from .test_export import _spiky_random

# what reports, the README and the validation stage read from an export's metrics
METRIC_KEYS = {"compaction", "int8", "c_runtime", "c", "timesteps", "encoding", "opset",
               "outputs", "export_seconds", "nodes", "bytes", "bytes_dense", "bytes_sparse",
               "states", "sparsity", "probe", "parity", "nir", "max_abs_diff",
               "spike_mismatches", "spike_mismatches_unexplained", "spike_mismatches_vs_folded",
               "near_threshold", "prediction_agreement", "passes", "cost"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small random convnet whose BatchNorm statistics make every layer spike, stored as a
    model artifact (no data named: the probe is seeded noise)."""
    spec, model = _spiky_random("convnet", 0.5, (1, 8, 8))
    store = Store(tmp_path_factory.mktemp("runs"))

    def write(job):
        checkpoint.save(job.dir / "model.pt", spec, model)
        return {}

    art, _ = store.run("train", {"passes-test": 1}, [], write)
    return store, art


def test_the_passes_are_declared_in_order_and_read_only_export_settings():
    assert [p.name for p in passes.PASSES] == ["prepare", "cost", "compact", "onnx", "onnx-step",
                                                "sparse", "int8", "c", "nir"]
    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    for p in passes.PASSES:
        assert set(p.reads) <= fields, p.name
    # every setting is some pass's (timesteps: the stage resolves T for all of them)
    assert {r for p in passes.PASSES for r in p.reads} | {"timesteps"} == fields


def test_a_pass_is_handed_only_what_it_declared():
    view = passes.Declared(ExportConfig(opset=15), ("opset",), "onnx-step")
    assert view.opset == 15
    with pytest.raises(AttributeError, match="'onnx-step' reads ExportConfig.nir without "
                                             "declaring it"):
        view.nir


def test_the_stage_records_every_pass_and_keeps_the_metrics(source):
    store, art = source
    exp, _ = export(store, art, ExportConfig(probe=16, nir=False, sparse_initializers=False))
    m = exp.metrics
    assert set(m) == METRIC_KEYS
    record = {r["name"]: r for r in m["passes"]}
    assert [r["name"] for r in m["passes"]] == [p.name for p in passes.PASSES]
    assert not record["nir"]["applied"] and m["nir"] == "not asked (--no-nir)"
    assert not record["sparse"]["applied"] and m["bytes_sparse"] == {}
    for name in ("onnx", "onnx-step"):  # checked on the probe against PyTorch: passed
        assert record[name]["applied"] and record[name]["passed"] is True
    assert record["int8"]["passed"] is None  # judged by validation's gates, not here
    assert set(m["parity"]) == {UNROLLED, STEP, "model.int8.onnx"}
    assert set(exp.manifest["files"]) == {UNROLLED, STEP, "model.int8.onnx", "model.h",
                                          "model.c", "model_weights.c", "runner.c", "cost.json"}
    full, _ = export(store, art, ExportConfig(probe=16))
    record = {r["name"]: r for r in full.metrics["passes"]}
    # sparse storage is checked by running the rewritten files again: identical outputs
    assert record["sparse"]["passed"] is True and full.metrics["bytes_sparse"]
    assert record["nir"]["passed"] is True and "model.nir" in full.manifest["files"]


def test_a_file_that_computes_something_else_fails_the_export(source, tmp_path):
    _, art = source
    spec, model = checkpoint.load(art.file("model.pt"))
    model.eval()
    cfg = ExportConfig(probe=16)

    def onnx_pass(deploy) -> bool:
        folder = tmp_path / str(id(deploy))
        folder.mkdir()
        ex = passes.Export(spec, model, spec.timesteps, folder, art)
        passes.prepare(ex, passes.Declared(cfg, ("probe",), "prepare"))
        ex.deploy = deploy
        return passes.onnx_unrolled(ex, passes.Declared(cfg, ("outputs", "opset"), "onnx"))[
            "passed"]

    assert onnx_pass(model) is True
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    with pytest.raises(GateFailed, match=r"model\.onnx does not reproduce .* same class"):
        onnx_pass(other)  # the file holds another network: its parity fails the export


def test_logits_only_parity_accepts_either_side_of_folding_and_nothing_else():
    """With logits as the only output a spike flipped by folding's rounding cannot be seen as a
    spike: a file matching the trained network (but not torch's folded one) passes, as one
    matching the folded network does; one matching neither fails. (The dense digits model's
    export failed before: |Δ| 0 against the trained network, 0.93 of 60 against the folded.)"""
    import numpy as np

    from export import passes

    trained = {"logits": np.array([[60.0, 1.0], [2.0, 30.0]], np.float32)}
    folded = {"logits": trained["logits"] + np.float32(0.93)}
    ex = passes.Export(spec=None, model=None, timesteps=5, folder=None, source=None,
                       ref=trained, folded=folded, near={})
    assert passes._parity(ex, "a.onnx", {"logits": trained["logits"].copy()})
    assert passes._parity(ex, "b.onnx", {"logits": folded["logits"].copy()})
    assert not passes._parity(ex, "c.onnx", {"logits": trained["logits"] + np.float32(0.4)})

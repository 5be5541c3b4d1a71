"""The export package against real ONNX Runtime sessions, a real NIR read-back, and a convnet
trained on digits (the shared `digits_model` fixture)."""
import copy
import json

import numpy as np
import nir
import onnx
import pytest
import torch

from cli import app  # noqa: F401  (the CLI module must import with the export command in it)
from edgeprune import checkpoint, data as datalib
from edgeprune.artifacts import Store, open_artifact
from edgeprune.config import ExportConfig
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec, prunable
from export import metadata, parity
from export.nir_graph import to_nir, write_nir
from export.nir_sim import simulate
from export.onnx_files import STEP, UNROLLED, write_onnx
from export.prepare import for_export
from export.export_stage import export

from .conftest import run_cli

TOL = 1e-4  # max abs logit difference allowed between ONNX Runtime and PyTorch


@pytest.fixture(scope="module")
def trained(digits_model):
    spec, model = checkpoint.load(digits_model.file("model.pt"))
    ds = datalib.load("digits")
    return spec, model.eval(), ds.x_test, ds.y_test


def _spiky_random(arch, width, input_shape, encoding="direct", seed=0):
    """A randomly initialized model whose BN statistics are set so every layer spikes (with
    PyTorch's default init the deep layers stay silent and a comparison proves little)."""
    torch.manual_seed(seed)
    spec = ModelSpec(arch=arch, width=width, input_shape=input_shape, encoding=encoding,
                     mean=(0.4,) * input_shape[0], std=(0.3,) * input_shape[0])
    model = spec.build().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(1.0, 3.0)
            m.bias.data.uniform_(0.0, 1.0)
    return spec, model


def _check(model, x, T, got, refs=None, exact_folded=True):
    """`got` (an exported file's outputs) against the PyTorch model: every prediction the same,
    logits within TOL, spike counts identical to the folded network the file holds, and any
    difference to the original (unfolded) model's spikes explained by a membrane potential within
    1e-5 of the threshold (folding BN changes float rounding, nothing else). A NIR graph rounds
    differently again (normalization as a 1x1 conv), so it is held to the second rule only."""
    if refs is None:
        refs = (parity.torch_reference(model, x, T, near_eps=1e-5),
                parity.torch_reference(for_export(model), x, T))
    ref, folded = (parity.prefix(r, T) for r in refs)
    c = parity.compare(ref, got, parity.near_threshold(ref))
    assert c["prediction_agreement"] == 1.0, c
    assert c["max_abs_diff"] < TOL, c
    assert c["spike_mismatches_unexplained"] == 0, c
    if exact_folded:
        exact = parity.compare(folded, got)
        assert exact["spike_mismatches"] == 0, exact
    return c


def test_unrolled_matches_pytorch_on_the_digits_test_set_for_T_1_to_8(trained, tmp_path,
                                                                       record_property):
    spec, model, x, y = trained
    measured = {}
    # One 8-step PyTorch run holds the reference of every shorter run (causal, zero state).
    refs = (parity.torch_reference(model, x, 8, near_eps=1e-5),
            parity.torch_reference(for_export(model), x, 8))
    for T in range(1, 9):
        folder = tmp_path / f"T{T}"
        folder.mkdir()
        write_onnx(spec, model, folder, timesteps=T, outputs="all", step=False)
        got = parity.run_unrolled(parity.session(folder / UNROLLED), x.numpy())
        ref = parity.prefix(refs[0], T)
        assert set(got) == {"logits", "step_logits", *[k for k in ref if k.startswith("spikes.")]}
        c = _check(model, x, T, got, refs)
        assert all(got[k].sum() > 0 for k in got if k.startswith("spikes.")), "a layer is silent"
        measured[T] = (c["max_abs_diff"], c["spike_mismatches"])
        if T == spec.timesteps:  # the trained T: the export is as accurate as the model
            acc = float((got["logits"].argmax(-1) == y.numpy()).mean())
            assert acc == pytest.approx(float((ref["logits"].argmax(-1) == y.numpy()).mean()))
            assert acc > 0.9
    record_property("max_abs_diff_per_T", json.dumps(measured))
    print("T: (max abs logit diff, spike flips vs unfolded model):", measured)


def test_graph_has_dynamic_batch_and_fixed_T(trained, tmp_path):
    spec, model, x, _ = trained
    write_onnx(spec, model, tmp_path, timesteps=3, outputs="all")
    sess = parity.session(tmp_path / UNROLLED)
    assert sess.get_inputs()[0].shape == ["batch", *spec.input_shape]
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    assert shapes["logits"] == ["batch", 10] and shapes["step_logits"] == [3, "batch", 10]
    for b in (1, 7):
        assert parity.run_unrolled(sess, x[:b].numpy())["step_logits"].shape == (3, b, 10)
    proto = onnx.load(str(tmp_path / UNROLLED))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops  # folded into the convs
    assert ops & {"Greater", "Less"}  # spikes as a plain comparison
    # The stem conv runs once (direct encoding); the second conv runs on T*batch folded.
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == 2


def test_streaming_model_fed_T_steps_equals_unrolled(trained, tmp_path):
    spec, model, x, _ = trained
    T = spec.timesteps
    write_onnx(spec, model, tmp_path, timesteps=T, outputs="all")
    states = metadata.read(tmp_path / STEP)["edgeprune.states"]
    assert [s["layer"] for s in states] == ["body.0", "body.4", "body.9"]
    assert [s["shape"] for s in states] == [[16, 8, 8], [32, 4, 4], [128]]
    assert all(s["init"] == 0.0 for s in states)
    sess = parity.session(tmp_path / STEP)
    assert {i.name for i in sess.get_inputs()} == {"input", "state_in.0", "state_in.1",
                                                   "state_in.2"}
    stream = parity.run_stream(sess, x.numpy(), T, "direct", states)
    unrolled = parity.run_unrolled(parity.session(tmp_path / UNROLLED), x.numpy())
    assert np.abs(stream["step_logits"] - unrolled["step_logits"]).max() < TOL
    assert (stream["logits"].argmax(-1) == unrolled["logits"].argmax(-1)).all()
    # A step graph does not grow with T.
    one = parity.run_stream(sess, x[:1].numpy(), 9, "direct", states)
    ref = parity.torch_reference(model, x[:1], 9)
    assert np.abs(one["step_logits"] - ref["step_logits"]).max() < TOL


def test_metadata_keys_the_validator_reads(digits_model, trained, tmp_path):
    spec, model, _, _ = trained
    write_onnx(spec, model, tmp_path, timesteps=4, artifact_id=digits_model.id)
    meta = parity.session(tmp_path / UNROLLED).get_modelmeta().custom_metadata_map
    for key in metadata.KEYS:
        assert key in meta, key
    assert meta["edgeprune.artifact_id"] == digits_model.id
    assert meta["edgeprune.timesteps"] == "4" and meta["edgeprune.encoding"] == "direct"
    assert meta["edgeprune.kind"] == "unrolled"
    assert json.loads(meta["edgeprune.neuron"])["tau_mem_inv"] == spec.neuron.tau_mem_inv
    assert json.loads(meta["edgeprune.class_names"]) == list(spec.class_names)
    assert json.loads(meta["edgeprune.normalization"])["mean"] == list(spec.mean)
    assert json.loads(meta["edgeprune.input_shape"]) == list(spec.input_shape)
    sp = json.loads(meta["edgeprune.sparsity"])
    assert set(sp["layers"]) == set(prunable(model)) and sp["total"] < 0.05  # dense model
    step = parity.session(tmp_path / STEP).get_modelmeta().custom_metadata_map
    assert step["edgeprune.kind"] == "step" and len(json.loads(step["edgeprune.states"])) == 3


def _prune(model, fraction):
    """Zero the smallest `fraction` of all conv/linear weights by magnitude (global)."""
    weights = prunable(model)
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    cut = flat.kthvalue(int(fraction * flat.numel())).values
    with torch.no_grad():
        for w in weights.values():
            w.mul_((w.abs() > cut).float())


def test_pruned_model_with_sparse_initializers_is_smaller_and_identical(trained, tmp_path):
    spec, model, x, _ = trained
    pruned = copy.deepcopy(model)
    _prune(pruned, 0.9)
    assert metadata.sparsity(pruned)["total"] == pytest.approx(0.9, abs=0.01)
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    dense.mkdir(), sparse.mkdir()
    write_onnx(spec, pruned, dense, timesteps=5, outputs="all")
    info = write_onnx(spec, pruned, sparse, timesteps=5, outputs="all", sparse=True)
    size_d, size_s = (dense / UNROLLED).stat().st_size, (sparse / UNROLLED).stat().st_size
    print(f"90% pruned convnet: dense {size_d} B, sparse initializers {size_s} B")
    assert size_s < 0.6 * size_d and info[UNROLLED]["bytes_dense"] == size_d
    graph = onnx.load(str(sparse / UNROLLED)).graph
    assert len(graph.sparse_initializer) >= 2
    for init in graph.initializer:  # whatever stayed dense would not have been smaller sparse
        arr = onnx.numpy_helper.to_array(init)
        if arr.size >= 64:
            assert np.count_nonzero(arr) >= arr.size / 3 - 1, init.name
    a = parity.run_unrolled(parity.session(dense / UNROLLED), x.numpy())
    b = parity.run_unrolled(parity.session(sparse / UNROLLED), x.numpy())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    _check(pruned, x, 5, b)
    meta = metadata.read(sparse / UNROLLED)
    assert meta["edgeprune.sparsity"]["total"] == pytest.approx(0.9, abs=0.01)
    states = metadata.read(sparse / STEP)["edgeprune.states"]
    s = parity.run_stream(parity.session(sparse / STEP), x[:20].numpy(), 5, "direct", states)
    assert np.abs(s["logits"] - b["logits"][:20]).max() < TOL


@pytest.mark.parametrize("arch", ["vgg16", "resnet19"])
def test_deep_models_at_width_one_eighth_export_and_match(arch, tmp_path):
    shape = (3, 16, 16) if arch == "vgg16" else (3, 8, 8)
    spec, model = _spiky_random(arch, 0.125, shape)
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(1))
    write_onnx(spec, model, tmp_path, timesteps=3, outputs="all")
    ref = parity.torch_reference(model, x, 3)
    assert sum(ref[k].sum() > 0 for k in ref if k.startswith("spikes.")) >= 5
    _check(model, x, 3, parity.run_unrolled(parity.session(tmp_path / UNROLLED), x.numpy()))
    states = metadata.read(tmp_path / STEP)["edgeprune.states"]
    stream = parity.run_stream(parity.session(tmp_path / STEP), x.numpy(), 3, "direct", states)
    assert np.abs(stream["step_logits"] - ref["step_logits"]).max() < TOL
    if arch == "resnet19":  # residual blocks map to NIR through summed edges
        graph = to_nir(model, spec.input_shape, 3)
        _check(model, x, 3, simulate(graph, x.numpy(), 3), exact_folded=False)


def test_poisson_model_takes_spike_trains(tmp_path):
    spec, model = _spiky_random("convnet", 1.0, (1, 8, 8), encoding="poisson")
    x = (torch.rand(4, 10, 1, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    write_onnx(spec, model, tmp_path, timesteps=4, outputs="all")
    sess = parity.session(tmp_path / UNROLLED)
    assert sess.get_inputs()[0].shape == [4, "batch", 1, 8, 8]
    ref = parity.torch_reference(model, x, 4)
    _check(model, x, 4, parity.run_unrolled(sess, x.numpy()))
    states = metadata.read(tmp_path / STEP)["edgeprune.states"]
    stream = parity.run_stream(parity.session(tmp_path / STEP), x.numpy(), 4, "poisson", states)
    assert np.abs(stream["step_logits"] - ref["step_logits"]).max() < TOL
    _check(model, x, 4, simulate(to_nir(model, spec.input_shape, 4), x.numpy(), 4,
                                 input_is_sequence=True), exact_folded=False)


def test_nir_read_back_simulates_to_the_pytorch_spikes_and_outputs(trained, tmp_path):
    spec, model, x, _ = trained
    x = x[:120]  # the numpy interpreter is slow; ONNX Runtime gets the full test set above
    write_nir(model, spec.input_shape, spec.timesteps, tmp_path / "model.nir")
    graph = nir.read(str(tmp_path / "model.nir"))
    lifs = {n: v for n, v in graph.nodes.items() if isinstance(v, nir.LIF)}
    assert set(lifs) == {"body.0", "body.4", "body.9"}
    for node in lifs.values():  # one Euler step of NIR's LIF with dt=1 is our update
        assert np.allclose(1.0 / node.tau, spec.neuron.tau_mem_inv)
        assert np.all(node.r == 1) and np.all(node.v_leak == 0)
        assert np.all(node.v_threshold == spec.neuron.v_th)
    types = {type(v).__name__ for v in graph.nodes.values()}
    assert {"SumPool2d", "Scale", "Flatten", "Affine", "Conv2d"} <= types
    assert float(graph.metadata["dt"]) == 1.0
    refs = (parity.torch_reference(model, x, 8, near_eps=1e-5),
            parity.torch_reference(for_export(model), x, 8))
    for T in (1, 8):
        _check(model, x, T, simulate(graph, x.numpy(), T), refs, exact_folded=False)


def test_nir_refuses_what_it_cannot_express():
    spec = ModelSpec(pool="max")
    with pytest.raises(UserError, match=r"body\.1 \(MaxPool2d\)"):
        to_nir(spec.build(), spec.input_shape, 2)
    from edgeprune.config import NeuronParams
    spec = ModelSpec(neuron=NeuronParams(reset="subtract"))
    with pytest.raises(UserError, match="subtraction"):
        to_nir(spec.build(), spec.input_shape, 2)


def test_export_stage_writes_an_artifact_and_caches(digits_model, tmp_path):
    store = Store(tmp_path)
    art, cached = export(store, digits_model, ExportConfig(outputs="all", probe=64))
    assert not cached and art.stage == "export" and art.manifest["inputs"] == [digits_model.id]
    for name in (UNROLLED, STEP, "model.nir"):
        art.file(name)  # present, sha256 checked
    m = art.metrics
    assert m["max_abs_diff"] < TOL and m["spike_mismatches_unexplained"] == 0
    assert m["spike_mismatches_vs_folded"] == 0
    assert m["prediction_agreement"] == 1.0 and m["nir"] == "written"
    assert set(m["parity"]) == {UNROLLED, STEP, "model.nir", "model.int8.onnx"}
    assert m["probe"] == "digits test[:64]"
    assert m["nodes"][STEP] < m["nodes"][UNROLLED]
    again, cached = export(store, digits_model, ExportConfig(outputs="all", probe=64))
    assert cached and again.id == art.id


def test_cli_export_json_and_errors(digits_model, tmp_path):
    model_pt = digits_model.path / "model.pt"
    r = run_cli("export", model_pt, "--out", tmp_path, "--json", "--sparse-initializers",
                "--no-nir", "-T", "2")
    assert r.returncode == 0, r.stderr
    payload = json.loads(r.stdout)
    art = open_artifact(payload["path"])
    assert set(art.manifest["files"]) == {UNROLLED, STEP, "model.int8.onnx", "model.h",
                                          "model.c", "model_weights.c", "runner.c", "cost.json"}
    assert art.metrics["nir"].startswith("not asked") and art.metrics["timesteps"] == 2
    assert payload["metrics"]["bytes_sparse"][UNROLLED] > 0
    bad = run_cli("export", model_pt, "--out", tmp_path, "--outputs", "some")
    assert bad.returncode == 2 and "outputs" in bad.stderr and "Traceback" not in bad.stderr
    human = run_cli("export", model_pt, "--out", tmp_path, "--no-nir", "-T", "2",
                    "--sparse-initializers")
    assert human.returncode == 0 and "(cached)" in human.stdout


def test_nir_flag_maxpool_model_errors_only_when_asked(tmp_path):
    spec = ModelSpec(pool="max")
    store = Store(tmp_path / "runs")

    def write(job):
        checkpoint.save(job.dir / "model.pt", spec, spec.build())
        return {}

    src, _ = store.run("train", {"maxpool": 1}, [], write)
    art, _ = export(store, src, ExportConfig(probe=8))
    assert art.metrics["nir"].startswith("skipped") and "MaxPool2d" in art.metrics["nir"]
    assert "model.nir" not in art.manifest["files"]
    with pytest.raises(UserError, match=r"body\.1 \(MaxPool2d\)"):  # --nir asked explicitly
        export(store, src, ExportConfig(probe=8, nir=True))

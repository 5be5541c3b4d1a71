"""The SNNs people already have: Norse's LIFCell network and snnTorch networks, trained with the
frameworks' own code, and NIR files, go through import -> compress -> export with the fidelity
of each import measured against the source framework. Real training, real files, no mocks."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune import data as datalib

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ExportConfig, ImportConfig, NeuronParams
from edgeprune.errors import UserError
from edgeprune.importers import nirfile
from edgeprune.importers.code import user_steps
from edgeprune.importers.import_stage import name_map
from edgeprune.stage_inputs import open_model
from edgeprune.layers import split_stem
from edgeprune.models import ModelSpec
from export.nir_graph import write_nir
from tests.conftest import assert_compress_parity, run_cli

pytest.importorskip("snntorch")
import snntorch  # noqa: E402

USERS = Path(__file__).parent / "user_models"
sys.path.insert(0, str(USERS))
import norse_digits  # noqa: E402
import snntorch_digits  # noqa: E402
import snntorch_nir  # noqa: E402

sys.path.remove(str(USERS))
T = 5


@pytest.fixture(scope="module")
def digits():
    return datalib.load("digits")


def _out(r):
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


# -- Norse's default neuron: LIFCell ------------------------------------------------------------

@pytest.fixture(scope="module")
def norse_lifcell(digits, tmp_path_factory):
    """Norse's LIFCell network trained the Norse way: SequentialState stepped T times."""
    torch.manual_seed(0)
    model = norse_digits.train_the_norse_way(norse_digits.lif_cell(), digits, T)
    path = tmp_path_factory.mktemp("norse") / "w.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_norse_lifcell_compresses_and_the_onnx_matches_the_users_module(norse_lifcell, digits,
                                                                        tmp_path):
    """Acceptance: LIFCell model through `compress --sparsity 0.9`; the ONNX file within 1e-4 of
    the user's own module run on the ticket weights, same class on the whole test set."""
    weights, _ = norse_lifcell
    out = _out(run_cli("compress", weights, "--model-def", f"{USERS}/norse_digits.py:lif_cell",
                       "-T", T, "--data", "digits", "--sparsity", "0.9", "--method", "imp",
                       "--round-epochs", "1", "--retrain-epochs", "3", "--out", tmp_path,
                       "--latency-budget-ms", "10000", "--max-accuracy-drop", "100",
                       "--target", "x86_64,c-x86_64", "--json"))
    s = out["summary"]
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3) and s["passed"]
    imported = open_model(Path(out["artifacts"]["imported"]))
    assert "cuba_lif" in imported.artifact.metrics["neurons"]
    assert imported.artifact.metrics["fidelity"][0]["max_abs_logit_diff"] == 0.0
    # the ticket's weights, put back into the user's own Norse module
    ticket = torch.load(out["artifacts"]["ticket"], weights_only=True)["state_dict"]
    user = norse_digits.lif_cell()
    paths = [d["user_path"] for d in json.loads((imported.artifact.path / "layers.json")
                                                .read_text())]
    ours = name_map(paths, split_stem(imported.spec.layers))
    back = {k: v for k, v in ticket.items() if not k.startswith("normalize.")}
    user.load_state_dict({next(p for p, o in ours.items() if k.startswith(o + ".")) + "." +
                          k.rsplit(".", 1)[1]: v for k, v in back.items()})
    user.eval()
    x = digits.x_test.float()
    ref = user_steps(user, [x] * T).sum(0).numpy()
    import onnxruntime as ort

    sess = ort.InferenceSession(out["artifacts"]["onnx"], providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    print(f"norse LIFCell ticket: ONNX vs user's module max |Δ| {diff:.3g}, same class {agree:.2%}")
    assert diff < 1e-4 and agree == 1.0
    assert_compress_parity(out)


# -- snnTorch ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def snn_convnet(digits, tmp_path_factory):
    net = snntorch_digits.train_the_snntorch_way(snntorch_digits.convnet(), digits, T)
    folder = tmp_path_factory.mktemp("snn")
    torch.save(net.state_dict(), folder / "w.pt")
    snntorch_nir.write(net, (1, 8, 8), folder / "model.nir")
    return folder, net, snntorch_digits.snntorch_accuracy(net, digits, T)


def test_snntorch_convnet_imports_exactly_from_code_and_from_nir(snn_convnet, tmp_path):
    folder, net, acc = snn_convnet
    assert acc > 0.5  # trained by snnTorch (chance 0.1)
    store = Store(tmp_path)
    code, _ = pipeline.import_model(store, f"{USERS}/snntorch_digits.py:convnet", folder / "w.pt",
                                    ImportConfig(timesteps=T), DataConfig("digits"))
    m = code.metrics
    assert m["neurons"] == ["decay_lif"] and m["frameworks"] == {"snntorch": snntorch.__version__}
    f = m["fidelity"][0]
    assert f["prediction_agreement"] == 1.0 and f["max_abs_logit_diff"] == 0.0
    assert m["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    # the NIR file written with snnTorch's conventions: recognized, read with its arithmetic
    # and its one-step-late reset: exact
    nir_art, _ = pipeline.import_model(store, None, folder / "model.nir", ImportConfig(timesteps=T),
                                       DataConfig("digits"))
    n = nir_art.metrics
    assert n["convention"] == "snntorch" and n["dt"] == 1e-4
    assert n["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    ours = open_model(nir_art.path / "model.pt").model.eval()
    x = torch.rand(32, 1, 8, 8)
    ref = user_steps(net, [x] * T)
    with torch.no_grad():
        assert torch.equal(ours(x, T), ref)
    refs = {r["reference"].split(" (")[0]: r for r in n["fidelity"]}
    assert "NIR equations" in refs and any(k.startswith("snntorch") for k in refs)
    # read as NIR's equations (reset to zero in the same step): an approximation, stated
    plain, _ = pipeline.import_model(store, None, folder / "model.nir",
                                     ImportConfig(timesteps=T, convention="nir", dt=1e-4),
                                     DataConfig("digits"))
    p = plain.metrics
    eq = next(r for r in p["fidelity"] if r["reference"].startswith("NIR equations"))
    assert eq["max_abs_logit_diff"] == 0.0  # it is exactly NIR's equations
    print(f"snnTorch convnet: snnTorch {acc:.4f}; from code {m['test_accuracy']:.4f}; from NIR "
          f"(snntorch convention) {n['test_accuracy']:.4f}; from NIR (nir convention, dt 1e-4) "
          f"{p['test_accuracy']:.4f}; fidelity {json.dumps(n['fidelity'])}")


def test_snntorch_nir_file_compresses_to_90_percent(snn_convnet, tmp_path):
    folder, _, acc = snn_convnet
    out = _out(run_cli("compress", folder / "model.nir", "-T", T, "--data", "digits",
                       "--sparsity", "0.9", "--method", "imp", "--round-epochs", "1",
                       "--retrain-epochs", "3", "--out", tmp_path, "--latency-budget-ms",
                       "10000", "--max-accuracy-drop", "100", "--target", "x86_64,c-x86_64",
                       "--json"))
    s = out["summary"]
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3) and s["passed"]
    assert s["validation"]["agreement"] == 1.0
    print(f"snnTorch NIR -> compress 0.9: dense {s['dense_accuracy']:.4f} (snnTorch {acc:.4f}), "
          f"ticket {s['ticket_accuracy']:.4f}, nir {s['nir']}")
    # round trip: the ticket's NIR export read back gives the ticket's outputs
    export_dir = Path(out["artifacts"]["onnx"]).parent
    assert s["nir"] == "written"
    back, _ = pipeline.import_model(Store(tmp_path / "rt"), None, export_dir / "model.nir",
                                    ImportConfig(timesteps=T), DataConfig("digits"))
    assert back.metrics["convention"] == "edgeprune"
    ticket = open_model(Path(out["artifacts"]["ticket"])).model.eval()
    again = open_model(back.path / "model.pt").model.eval()
    x = datalib.load("digits").x_test.float()
    with torch.no_grad():
        a, b = ticket(x, T), again(x, T)
    assert float((a - b).abs().max()) < 1e-5 and torch.equal(a.sum(0).argmax(1),
                                                               b.sum(0).argmax(1))


def test_snntorch_explicit_state_synaptic_and_zero_reset_export_exactly(digits, tmp_path):
    """Leaky and Synaptic without init_hidden (state passed by the caller), zero reset, learnable
    beta/threshold, immediate reset: imported exactly, exported to ONNX (one-step graph with syn
    and mem states) and the C runtime."""
    torch.manual_seed(3)
    net = snntorch_digits.explicit_state()
    with torch.no_grad():
        net[1].weight.mul_(4.0)
        net[3].weight.mul_(4.0)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    store = Store(tmp_path / "runs")
    art, _ = pipeline.import_model(store, f"{USERS}/snntorch_digits.py:explicit_state",
                                   tmp_path / "w.pt", ImportConfig(timesteps=T),
                                   DataConfig("digits"))
    m = art.metrics
    assert m["fidelity"][0]["max_abs_logit_diff"] == 0.0 and m["mean_spike_rate"] > 0.01
    spec = open_model(art.path / "model.pt").spec
    neurons = [d["neuron"] for d in spec.layers if d["type"] == "decay_lif"]
    assert neurons[0]["alpha_syn"] == pytest.approx(0.8) and neurons[0]["reset"] == "zero"
    assert neurons[1]["reset_delay"] is False and neurons[1]["threshold"] == pytest.approx(0.8)
    exp, _ = pipeline.export(store, art.path / "model.pt", ExportConfig(probe=64, c_runtime=True))
    e = exp.metrics
    assert e["max_abs_diff"] < 1e-5 and e["prediction_agreement"] == 1.0
    assert e["states"] == 3 and e["c_runtime"] == "written"  # syn, mem + mem
    assert e["parity"]["model.nir"]["max_abs_diff"] < 1e-5  # exact node descriptions
    from edgeprune.config import ValidateConfig

    val, _ = pipeline.validate(store, exp.path / "model.onnx",
                               ValidateConfig(target="c-x86_64", latency_budget_ms=10000,
                                              dense=False),
                               against=art.path / "model.pt", data=DataConfig("digits"))
    c = json.loads((val.path / "report.json").read_text())["targets"][0]
    assert c["runtime"] == "c" and c["parity"]["agreement"] == 1.0, c["parity"]
    assert c["parity"]["max_abs_diff"] < 1e-4


def test_per_neuron_beta_is_refused_naming_the_layer(tmp_path):
    torch.save(snntorch_digits.per_neuron_beta().state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"layer 2 \(Leaky\).*differs between neurons"):
        pipeline.import_model(Store(tmp_path), f"{USERS}/snntorch_digits.py:per_neuron_beta",
                              tmp_path / "w.pt", ImportConfig(input_shape=(1, 8, 8),
                                                              num_classes=10), DataConfig("none"))


# -- NIR round trips and refusals ------------------------------------------------------------

@pytest.mark.parametrize("neuron", [NeuronParams(tau_syn_inv=0.5),  # current-based (CubaLIF)
                                    NeuronParams()])  # box LIF
def test_nir_export_reads_back_to_the_same_outputs(neuron, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(neuron=neuron, timesteps=4, width=0.5)
    model = spec.build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    write_nir(model, spec.input_shape, 4, tmp_path / "m.nir")
    store = Store(tmp_path / "runs")
    art, _ = pipeline.import_model(store, None, tmp_path / "m.nir",
                                   ImportConfig(timesteps=4), DataConfig("digits"))
    back = open_model(art.path / "model.pt").model.eval()
    from export.prepare import for_export

    x = datalib.load("digits").x_test[:100].float()
    with torch.no_grad():
        a, b = for_export(model)(x, 4), back(x, 4)
    assert torch.equal(a, b)
    fid = {f["reference"].split(" (")[0]: f for f in art.metrics["fidelity"]}
    exact = fid["edgeprune's exact node descriptions"]  # numpy: another summation order only
    assert exact["max_abs_logit_diff"] < 1e-4 and exact["prediction_agreement"] == 1.0
    # the standard nodes alone (another reader's view) are NIR's equations: the same neurons
    plain, _ = pipeline.import_model(store, None, tmp_path / "m.nir",
                                     ImportConfig(timesteps=4, convention="nir", dt=1.0),
                                     DataConfig("digits"))
    c = open_model(plain.path / "model.pt").model.eval()
    with torch.no_grad():
        assert float((c(x, 4) - a).abs().max()) < 1e-4


def _graph(tmp_path, extra_node=None):
    import nir

    nodes = {"input": nir.Input(input_type={"input": np.array([4])}),
             "fc": nir.Affine(weight=np.ones((3, 4), np.float32), bias=np.zeros(3, np.float32)),
             "lif": nir.LIF(tau=np.full(3, 2e-3), r=np.ones(3), v_leak=np.zeros(3),
                            v_threshold=np.ones(3), v_reset=np.zeros(3)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "output")]
    if extra_node is not None:
        nodes["odd"] = extra_node
        edges = [("input", "odd"), ("odd", "fc"), ("fc", "lif"), ("lif", "output")]
    path = tmp_path / ("odd.nir" if extra_node is not None else "g.nir")
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges))
    return path


def test_nir_refusals_exit_2_with_one_line(tmp_path):
    import nir

    common = ["--data", "none", "--out", tmp_path / "runs"]
    bad = _graph(tmp_path, nir.Delay(delay=np.ones(4)))
    r = run_cli("import-model", bad, "--dt", "1e-3", *common)
    assert r.returncode == 2 and "node odd" in r.stderr and "Delay" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("import-model", tmp_path / "missing.nir", *common)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    good = _graph(tmp_path)
    for dt, words in (("-1", "--dt must be a positive"), ("0.01", "node lif: dt/tau")):
        r = run_cli("import-model", good, "--dt", dt, *common)
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("import-model", good, *common)  # no dt anywhere: asked for, not guessed
    assert r.returncode == 2 and "give --dt" in r.stderr
    out = _out(run_cli("import-model", good, "--dt", "1e-3", *common, "--json"))
    assert out["metrics"]["neurons"] == ["lif"] and out["metrics"]["dt"] == 1e-3
    r = run_cli("compress", bad, "--dt", "1e-3", "--out", tmp_path / "runs")
    assert r.returncode == 2 and "node odd" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_nir_reader_refuses_links_to_other_files(tmp_path):
    import h5py

    good = _graph(tmp_path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["secret"] = np.arange(3)
    with h5py.File(good, "a") as f:
        f["node"]["nodes"]["fc"]["extra"] = h5py.ExternalLink(str(tmp_path / "other.h5"),
                                                              "secret")
    with pytest.raises(UserError, match="links are not allowed"):
        nirfile.load(good, dt=1e-3)


def test_current_based_lif_trains_searches_and_exports_everywhere(tmp_path):
    """The current-based LIF as a first-class neuron: `train --tau-syn-inv`, a ticket search,
    and every export (unrolled and streaming ONNX with its (v, i) state, NIR CubaLIF, C)."""
    from edgeprune.config import (ImpSettings, ModelConfig, SearchConfig, TrainConfig,
                                  ValidateConfig)

    store = Store(tmp_path)
    dense, _ = pipeline.train(store, DataConfig("digits"),
                              ModelConfig(width=1.0, timesteps=4,
                                          neuron=NeuronParams(tau_syn_inv=0.5)),
                              TrainConfig(epochs=3))
    assert dense.metrics["test_accuracy"] > 0.5
    assert dense.config["model"]["neuron"]["tau_syn_inv"] == 0.5
    mask, _ = pipeline.search(store, dense.path / "model.pt",
                              SearchConfig(method="imp", sparsity=0.5, imp=ImpSettings(0.5),
                                           round_epochs=1))
    exp, _ = pipeline.export(store, dense.path / "model.pt",
                             ExportConfig(probe=64, nir=True, c_runtime=True))
    e = exp.metrics
    assert e["max_abs_diff"] < 1e-4 and e["prediction_agreement"] == 1.0
    assert e["states"] == 6 and e["nir"] == "written" and e["c_runtime"] == "written"
    assert e["parity"]["model.nir"]["spike_mismatches_unexplained"] == 0
    val, _ = pipeline.validate(store, exp.path / "model.onnx",
                               ValidateConfig(target="c-x86_64", latency_budget_ms=10000,
                                              dense=False),
                               against=dense.path / "model.pt", data=DataConfig("digits"))
    assert val.metrics["passed"], val.metrics
    assert mask.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_nir_sequence_model_with_conv1d_cubalif_and_integrator(tmp_path):
    """A NIR graph on (C, L) sequences: Conv1d, CubaLIF with gains, Flatten, Affine, I. Read
    (gains as Scale layers), equal to NIR's equations, exported to ONNX and NIR, read back."""
    import nir

    rng = np.random.default_rng(0)
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([2, 16])}),
        "c": nir.Conv1d(input_shape=16, weight=rng.normal(size=(4, 2, 3)).astype(np.float32),
                        stride=1, padding=1, dilation=1, groups=1,
                        bias=np.zeros(4, np.float32)),
        "l": nir.CubaLIF(tau_mem=np.full((4, 16), 2e-3), tau_syn=np.full((4, 16), 4e-3),
                         r=np.ones((4, 16)), w_in=np.ones((4, 16)), v_leak=np.zeros((4, 16)),
                         v_threshold=np.full((4, 16), 0.2), v_reset=np.zeros((4, 16))),
        "f": nir.Flatten(input_type={"input": np.array([4, 16])}, start_dim=0),
        "a": nir.Affine(weight=rng.normal(size=(5, 64)).astype(np.float32),
                        bias=np.zeros(5, np.float32)),
        "i": nir.I(r=np.ones(5)),
        "output": nir.Output(output_type={"output": np.array([5])})},
        edges=[("input", "c"), ("c", "l"), ("l", "f"), ("f", "a"), ("a", "i"), ("i", "output")])
    nir.write(str(tmp_path / "seq.nir"), g)
    store = Store(tmp_path / "runs")
    art, _ = pipeline.import_model(store, None, tmp_path / "seq.nir",
                                   ImportConfig(timesteps=4, dt=1e-3), DataConfig("none"))
    m = art.metrics
    assert m["neurons"] == ["cuba_lif", "integrator"] and len(m["notes"]) == 2  # two gains
    assert m["fidelity"][0]["max_abs_logit_diff"] < 1e-6
    exp, _ = pipeline.export(store, art.path / "model.pt", ExportConfig(probe=32))
    e = exp.metrics
    assert e["max_abs_diff"] < 1e-5 and e["nir"] == "written"
    back, _ = pipeline.import_model(store, None, exp.path / "model.nir",
                                    ImportConfig(timesteps=4), DataConfig("none"))
    x = torch.rand(16, 2, 16)
    with torch.no_grad():
        a = open_model(art.path / "model.pt").model.eval()(x, 4)
        b = open_model(back.path / "model.pt").model.eval()(x, 4)
    assert torch.equal(a, b)

"""SpikingJelly, Sinabs and Rockpool models, trained with each framework's own loop on digits and
written to NIR with its own exporter (in a tmp dir, here), come in exactly or are refused with
one line: never a different network with exit 0. Skipped where a framework is not installed
(mandatory on CI: EDGEPRUNE_REQUIRE_FRAMEWORKS=1). The import's own checks (a layer that never
fires, a reference that disagrees) run on every NIR file and need no framework."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline
from edgeprune import data as datalib
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ImportConfig
from edgeprune.errors import UserError
from edgeprune.importers import nirfile
from edgeprune.stage_inputs import open_model
from tests.conftest import requires_cc, requires_framework, run_cli

USERS = Path(__file__).parent / "user_models"
sys.path.insert(0, str(USERS))
import other_frameworks as fw  # noqa: E402

sys.path.remove(str(USERS))
T = 4


@pytest.fixture(scope="module")
def digits():
    return datalib.load("digits")


def _one_line_refusal(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _steps(art, ds) -> torch.Tensor:
    model = open_model(art.path / "model.pt").model.eval()
    with torch.no_grad():
        return model(ds.x_test.float(), T)


def _same_class(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.sum(0).argmax(-1) == b.sum(0).argmax(-1)).float().mean())


def _accuracy(steps: torch.Tensor, ds) -> float:
    return float((steps.sum(0).argmax(-1) == ds.y_test).double().mean())


def _compress_90(path, tmp_path, *extra):
    r = run_cli("compress", path, *extra, "-T", T, "--data", "digits", "--sparsity", "0.9",
                "--method", "imp", "--round-epochs", "1", "--retrain-epochs", "3", "--out",
                tmp_path, "--latency-budget-ms", "10000", "--max-accuracy-drop", "100",
                "--target", "x86_64,c-x86_64", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)["summary"]
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3) and s["passed"]
    assert s["validation"]["agreement"] == 1.0  # ONNX Runtime and the C runtime, as PyTorch
    return s


# -- Sinabs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["iaf", "lif"])
def sinabs_model(request, digits, tmp_path_factory):
    net = fw.train_the_sinabs_way(fw.sinabs_net(request.param, T), digits, T)
    folder = tmp_path_factory.mktemp(f"sinabs_{request.param}")
    fw.sinabs_to_nir(net, folder / "model.nir", T)
    with torch.no_grad():
        ref = fw.sinabs_forward(net, digits.x_test.float(), T)
    return request.param, folder / "model.nir", ref


@requires_framework["sinabs"]
def test_sinabs_nir_is_refused_without_its_convention_and_exact_with_it(sinabs_model, digits,
                                                                        tmp_path):
    kind, path, ref = sinabs_model
    acc = _accuracy(ref, digits)
    assert acc > 0.5  # trained by Sinabs (chance 0.1)
    # Sinabs leaves no fingerprint and its IAF is not NIR's IF: asked, not guessed
    r = run_cli("import-model", path, "--data", "digits", "-T", T, "--out", tmp_path / "a")
    if kind == "iaf":
        _one_line_refusal(r, "looks written by Sinabs", "--convention sinabs")
    art, _ = pipeline.import_model(Store(tmp_path), None, path,
                                   ImportConfig(timesteps=T, convention="sinabs"),
                                   DataConfig("digits"))
    got = _steps(art, digits)
    assert _same_class(ref, got) == 1.0 and float((ref - got).abs().max()) < 1e-4
    m = art.metrics
    assert m["neurons"] == ["sinabs_lif"] and m["problems"] == []
    assert m["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    print(f"Sinabs {kind}: Sinabs {acc:.4f}; from NIR (--convention sinabs) "
          f"{m['test_accuracy']:.4f}; fidelity {json.dumps(m['fidelity'])}")


@requires_framework["sinabs"]
@requires_cc
def test_sinabs_iaf_nir_compresses_to_90_percent(sinabs_model, tmp_path):
    kind, path, _ = sinabs_model
    if kind != "iaf":
        pytest.skip("one compress per framework (the IAF net)")
    s = _compress_90(path, tmp_path, "--convention", "sinabs")
    print(f"Sinabs IAF NIR -> compress 0.9: dense {s['dense_accuracy']:.4f}, ticket "
          f"{s['ticket_accuracy']:.4f}")


# -- SpikingJelly -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spikingjelly_model(digits, tmp_path_factory):
    net = fw.train_the_spikingjelly_way(fw.spikingjelly_net(), digits, T)
    folder = tmp_path_factory.mktemp("spikingjelly")
    fw.spikingjelly_to_nir(net, folder / "model.nir")
    with torch.no_grad():
        ref = fw.spikingjelly_forward(net, digits.x_test.float(), T)
    return folder / "model.nir", ref


@requires_framework["spikingjelly"]
def test_spikingjelly_nir_is_recognized_and_exact(spikingjelly_model, digits, tmp_path):
    path, ref = spikingjelly_model
    acc = _accuracy(ref, digits)
    assert acc > 0.5
    art, _ = pipeline.import_model(Store(tmp_path), None, path, ImportConfig(timesteps=T),
                                   DataConfig("digits"))
    m = art.metrics
    assert m["convention"] == "spikingjelly" and m["dt"] == 1e-4
    assert m["neurons"] == ["charge_lif"] and m["problems"] == []
    got = _steps(art, digits)
    assert _same_class(ref, got) == 1.0 and torch.equal(ref, got)
    own = [f for f in m["fidelity"] if f["reference"].startswith("spikingjelly")]
    assert own and own[0]["binding"] and own[0]["prediction_agreement"] == 1.0
    print(f"SpikingJelly IF/LIF: SpikingJelly {acc:.4f}; from NIR {m['test_accuracy']:.4f}; "
          f"fidelity {json.dumps(m['fidelity'])}")


@requires_framework["spikingjelly"]
@requires_cc
def test_spikingjelly_nir_compresses_to_90_percent(spikingjelly_model, tmp_path):
    path, _ = spikingjelly_model
    s = _compress_90(path, tmp_path)
    print(f"SpikingJelly NIR -> compress 0.9: dense {s['dense_accuracy']:.4f}, ticket "
          f"{s['ticket_accuracy']:.4f}")


@requires_framework["spikingjelly"]
def test_spikingjelly_tutorial_net_imports_exactly_from_code(digits, tmp_path):
    """layer.Conv2d/BatchNorm2d/AvgPool2d/Flatten/Linear (subclasses of the torch layers, in
    multi-step mode) and LIFNode with decay_input off and a soft reset: read as what they are;
    the import's own parity check (1e-5) and fidelity run against SpikingJelly itself."""
    torch.manual_seed(0)
    net = fw.train_the_spikingjelly_multistep_way(fw.spikingjelly_tutorial(), digits, T)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    art, _ = pipeline.import_model(Store(tmp_path), f"{USERS}/other_frameworks.py:"
                                   "spikingjelly_tutorial", tmp_path / "w.pt",
                                   ImportConfig(timesteps=T), DataConfig("digits"))
    m = art.metrics
    assert m["frameworks"] == {"spikingjelly": "2.0.0"} and m["neurons"] == ["charge_lif"]
    f = m["fidelity"][0]
    assert f["prediction_agreement"] == 1.0 and f["max_abs_logit_diff"] < 1e-4
    assert f["reference_accuracy"] > 0.2 and m["test_accuracy"] == f["reference_accuracy"]
    print(f"SpikingJelly tutorial net from code: SpikingJelly {f['reference_accuracy']:.4f}, "
          f"import {m['test_accuracy']:.4f}, max |d logits| {f['max_abs_logit_diff']}")


# -- Rockpool -------------------------------------------------------------------------------------

@requires_framework["rockpool"]
def test_rockpool_lif_is_refused_and_its_input_dimensions_are_read(digits, tmp_path):
    """LIFTorch has no exact edgeprune form: refused, one line, whether the convention is
    detected or named. Rockpool's Input keeps batch and time ([1, T, 64]): read as [64]."""
    torch.manual_seed(0)
    fw.rockpool_to_nir(fw.rockpool_net(), tmp_path / "lif.nir", T)
    for extra in ((), ("--convention", "rockpool")):
        r = run_cli("import-model", tmp_path / "lif.nir", *extra, "--data", "digits", "-T", T,
                    "--out", tmp_path / "runs")
        _one_line_refusal(r, "LIFTorch", "not imported")
    net = fw.rockpool_net(with_neurons=False)
    fw.rockpool_to_nir(net, tmp_path / "linear.nir", T)
    imp = nirfile.load(tmp_path / "linear.nir")
    assert imp.convention == "rockpool" and imp.writer == "rockpool"
    assert imp.input_shape == (64,) and imp.output_shape == (10,)
    assert any("[1, 4, 64] read as [64]" in n for n in imp.notes)
    (lin,) = imp.layers
    # Rockpool's LinearTorch keeps (in, out); NIR and edgeprune (out, in)
    assert np.array_equal(lin.tensors["weight"], net[0].weight.detach().numpy().T)


# -- the import's own checks, on any NIR file ------------------------------------------------

def _silent_graph(path):
    """A chain whose LIF can never reach its threshold: every prediction is the same."""
    import nir

    nodes = {"input": nir.Input(input_type={"input": np.array([64])}),
             "fc": nir.Affine(weight=np.full((10, 64), 0.01, np.float32),
                              bias=np.zeros(10, np.float32)),
             "lif": nir.LIF(tau=np.full(10, 2e-3), r=np.ones(10), v_leak=np.zeros(10),
                            v_threshold=np.full(10, 1e6), v_reset=np.zeros(10)),
             "output": nir.Output(output_type={"output": np.array([10])})}
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"),
                                                         ("lif", "output")]))
    return path


def test_a_layer_that_never_fires_is_refused_unless_accepted(tmp_path):
    path = _silent_graph(tmp_path / "silent.nir")
    common = ("--data", "digits", "-T", T, "--convention", "nir", "--dt", "1e-3", "--out",
              tmp_path / "runs")
    line = _one_line_refusal(run_cli("import-model", path, *common), "layer body.0 never fires",
                             "--accept-mismatch")
    assert "chance" not in line  # NIR's equations (binding under nir) agree: not the import's fault
    r = run_cli("compress", path, *common, "--sparsity", "0.5")
    _one_line_refusal(r, "never fires")
    assert not list((tmp_path / "runs").rglob("model.onnx"))  # nothing searched or exported
    ok = run_cli("import-model", path, *common, "--accept-mismatch", "--json")
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert any("never fires" in p for p in json.loads(ok.stdout)["metrics"]["problems"])
    # the accepted artifact is cached; without the flag it is refused again
    _one_line_refusal(run_cli("import-model", path, *common), "never fires")
    with pytest.raises(UserError, match="never fires"):
        pipeline.import_model(Store(tmp_path / "runs"), None, path,
                              ImportConfig(timesteps=T, convention="nir", dt=1e-3),
                              DataConfig("digits"))

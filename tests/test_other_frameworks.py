"""SpikingJelly, Sinabs and Rockpool models, trained with each framework's own loop on digits,
imported from code (definition + state_dict) and from NIR written with each framework's own
exporter (in a tmp dir, here), come in exactly or are refused with one line: never a different
network with exit 0. Skipped where a framework is not installed
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
    r = run_cli("compress", *([path] if path else []), *extra, "-T", T, "--data", "digits",
                "--sparsity", "0.9", "--method", "imp", "--round-epochs", "1",
                "--retrain-epochs", "3", "--out", tmp_path, "--latency-budget-ms", "10000",
                "--max-accuracy-drop", "100", "--target", "x86_64,c-x86_64", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)["summary"]
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3) and s["passed"]
    assert s["validation"]["agreement"] == 1.0  # ONNX Runtime and the C runtime, as PyTorch
    return s


def _from_code(tmp_path, function: str, net):
    """The user's definition (tests/user_models/other_frameworks.py:FUNCTION) and the trained
    net's state_dict, imported from code; (artifact, the weights file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    art, _ = pipeline.import_model(Store(tmp_path), f"{USERS}/other_frameworks.py:{function}",
                                   tmp_path / "w.pt", ImportConfig(timesteps=T),
                                   DataConfig("digits"))
    return art, tmp_path / "w.pt"


def _exact_from_code(art, framework: str, acc: float) -> dict:
    """The import's own fidelity run against the framework: every step's output the same."""
    m = art.metrics
    assert list(m["frameworks"]) == [framework] and m["parity_max_abs_diff"] == 0.0
    (f,) = m["fidelity"]
    assert f["reference"].startswith(f"your module, run by {framework}")
    assert f["prediction_agreement"] == 1.0 and f["max_abs_step_diff"] == 0.0
    assert f["reference_accuracy"] == pytest.approx(acc, abs=1e-9) == m["test_accuracy"]
    return f


# -- Sinabs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["iaf", "lif"])
def sinabs_model(request, digits, tmp_path_factory):
    net = fw.train_the_sinabs_way(fw.sinabs_net(request.param, T), digits, T)
    folder = tmp_path_factory.mktemp(f"sinabs_{request.param}")
    fw.sinabs_to_nir(net, folder / "model.nir", T)
    with torch.no_grad():
        ref = fw.sinabs_forward(net, digits.x_test.float(), T)
    return request.param, folder / "model.nir", ref, net


@requires_framework["sinabs"]
def test_sinabs_nir_is_refused_without_its_convention_and_exact_with_it(sinabs_model, digits,
                                                                        tmp_path):
    kind, path, ref, _ = sinabs_model
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
def test_sinabs_squeeze_net_imports_exactly_from_code(sinabs_model, digits, tmp_path):
    """IAFSqueeze / LIFSqueeze (multi-spike, subtractive reset; LIF's norm_input) with Sinabs'
    SumPool2d, run by Sinabs on (batch·time, ...) input: every step's spike count the same."""
    kind, _, ref, net = sinabs_model
    art, _ = _from_code(tmp_path, f"sinabs_{kind}", net)
    f = _exact_from_code(art, "sinabs", _accuracy(ref, digits))
    assert art.metrics["neurons"] == ["sinabs_lif"]
    assert torch.equal(_steps(art, digits), ref)  # the whole test set, step by step
    print(f"Sinabs {kind} from code: Sinabs {f['reference_accuracy']:.4f}, import "
          f"{art.metrics['test_accuracy']:.4f}, max |d step| {f['max_abs_step_diff']}")


@requires_framework["sinabs"]
@requires_cc
def test_sinabs_iaf_net_compresses_to_90_percent_from_code(sinabs_model, tmp_path):
    kind, _, _, net = sinabs_model
    if kind != "iaf":
        pytest.skip("one compress per framework (the IAF net)")
    torch.save(net.state_dict(), tmp_path / "w.pt")
    s = _compress_90(None, tmp_path / "runs", "--model-def",
                     f"{USERS}/other_frameworks.py:sinabs_iaf", "--state-dict", tmp_path / "w.pt")
    print(f"Sinabs IAF code -> compress 0.9: dense {s['dense_accuracy']:.4f}, ticket "
          f"{s['ticket_accuracy']:.4f}")


@requires_framework["sinabs"]
def test_sinabs_variants_are_read_or_refused_by_what_they_are(digits, tmp_path):
    """SingleSpike, MembraneReset(reset_value), min_v_mem, a fixed batch_size, trained alphas
    and plain IAF/LIF (stepped) are exact; a synaptic current and recurrence are refused."""
    for i, function in enumerate(("sinabs_variants", "sinabs_plain")):
        torch.manual_seed(0)
        user = getattr(fw, function)()
        art, _ = _from_code(tmp_path / str(i), function, user)
        m = art.metrics
        assert m["fidelity"][0]["max_abs_step_diff"] == 0.0 and m["parity_max_abs_diff"] == 0.0
        assert _fires(art, digits)
    for function, words in (("sinabs_synaptic", "tau_syn"), ("sinabs_recurrent", "IAFRecurrent")):
        r = run_cli("import-model", "--model-def", f"{USERS}/other_frameworks.py:{function}",
                    "--state-dict", _weights(tmp_path, getattr(fw, function)()), "--data",
                    "digits", "-T", T, "--out", tmp_path / "runs")
        _one_line_refusal(r, words, "not supported")


def _weights(tmp_path, net) -> Path:
    path = tmp_path / f"w{id(net)}.pt"
    torch.save(net.state_dict(), path)
    return path


def _fires(art, ds) -> bool:
    return float(_steps(art, ds).abs().sum()) > 0


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
    tmp_path.mkdir(parents=True, exist_ok=True)
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

@pytest.fixture(scope="module")
def rockpool_model(digits, tmp_path_factory):
    net = fw.train_the_rockpool_way(fw.rockpool_constant_net(), digits, T)
    folder = tmp_path_factory.mktemp("rockpool")
    fw.rockpool_to_nir(net, folder / "model.nir", T)
    with torch.no_grad():
        ref = fw.rockpool_forward(net, digits.x_test.float(), T)
    return net, folder / "model.nir", ref


@requires_framework["rockpool"]
def test_rockpool_net_imports_exactly_from_code_and_from_nir(rockpool_model, digits, tmp_path):
    """A TorchSequential of LinearTorch and LIFTorch, trained by Rockpool, run by Rockpool on
    (batch, time, channels): from code and from its to_nir file, every step the same."""
    net, path, ref = rockpool_model
    acc = _accuracy(ref, digits)
    assert acc > 0.5
    art, _ = _from_code(tmp_path / "code", "rockpool_constant_net", net)
    f = _exact_from_code(art, "rockpool", acc)
    assert art.metrics["neurons"] == ["rockpool_lif"]
    assert torch.equal(_steps(art, digits), ref)
    nir_art, _ = pipeline.import_model(Store(tmp_path / "nir"), None, path,
                                       ImportConfig(timesteps=T), DataConfig("digits"))
    m = nir_art.metrics
    assert m["convention"] == "rockpool" and m["neurons"] == ["rockpool_lif"]
    got = _steps(nir_art, digits)
    assert _same_class(ref, got) == 1.0 and torch.equal(ref, got)
    imp = nirfile.load(path)
    assert imp.input_shape == (64,) and any("[1, 4, 64] read as [64]" in n for n in imp.notes)
    assert any("writes no bias" in n for n in imp.notes)  # what the file cannot say
    # Rockpool's own reader runs (not binding: it estimates dt as min(tau_mem/(1 + r)))
    (own,) = [r for r in m["fidelity"] if r["reference"].startswith("rockpool (from_nir)")]
    assert not own["binding"] and "prediction_agreement" in own, own
    print(f"Rockpool LIFTorch: Rockpool {acc:.4f}; from code {art.metrics['test_accuracy']:.4f} "
          f"(max |d step| {f['max_abs_step_diff']}); from NIR {m['test_accuracy']:.4f}; "
          f"fidelity {json.dumps(m['fidelity'])}")


@requires_framework["rockpool"]
@requires_cc
def test_rockpool_net_compresses_to_90_percent_from_code(rockpool_model, tmp_path):
    net, _, _ = rockpool_model
    torch.save(net.state_dict(), tmp_path / "w.pt")
    s = _compress_90(None, tmp_path / "runs", "--model-def",
                     f"{USERS}/other_frameworks.py:rockpool_constant_net", "--state-dict",
                     tmp_path / "w.pt")
    print(f"Rockpool code -> compress 0.9: dense {s['dense_accuracy']:.4f}, ticket "
          f"{s['ticket_accuracy']:.4f}")


@requires_framework["rockpool"]
def test_rockpool_variants_are_read_or_refused_by_what_they_are(digits, tmp_path):
    """max_spikes_per_dt and a bias are exact; time constants that differ between neurons
    (LIFTorch's trainable default) and a module it has no form for are refused, naming it."""
    art, _ = _from_code(tmp_path / "a", "rockpool_clamped", fw.rockpool_clamped())
    assert art.metrics["fidelity"][0]["max_abs_step_diff"] == 0.0 and _fires(art, digits)
    assert float(_steps(art, digits).max()) >= 2  # counts, clamped to max_spikes_per_dt
    for function, words in (("rockpool_per_neuron", ("differs between neurons", "Constant")),
                            ("rockpool_exp_syn", ("ExpSynTorch", "a subclass of torch.nn"))):
        r = run_cli("import-model", "--model-def", f"{USERS}/other_frameworks.py:{function}",
                    "--state-dict", _weights(tmp_path, getattr(fw, function)()), "--data",
                    "digits", "-T", T, "--out", tmp_path / "runs")
        _one_line_refusal(r, *words)


# -- a user's wrapper class ---------------------------------------------------------------------

@requires_framework["spikingjelly"]
def test_a_wrapper_holding_one_sequential_is_read_through_it(digits, tmp_path):
    """SpikingJelly's tutorial pattern: `self.conv_fc = nn.Sequential(layer.*, neuron.*)`,
    forward `return self.conv_fc(x)`: read through its one child, proven against the wrapper's
    own forward. A forward that does more, or a second child, is refused in one line."""
    art, _ = _from_code(tmp_path / "a", "spikingjelly_wrapped", fw.spikingjelly_wrapped())
    m = art.metrics
    assert m["frameworks"] == {"spikingjelly": "2.0.0"} and m["parity_max_abs_diff"] == 0.0
    assert m["fidelity"][0]["prediction_agreement"] == 1.0 and _fires(art, digits)
    layers_json = json.loads((art.path / "layers.json").read_text())
    assert layers_json[0]["user_path"] == "conv_fc.0"
    for function, words in (("spikingjelly_wrapped_more", ("computes something other than its "
                                                          "child 'conv_fc'",)),
                            ("spikingjelly_two_children", ("2 child module(s)", "conv_fc",
                                                           "readout", "whose only child"))):
        r = run_cli("import-model", "--model-def", f"{USERS}/other_frameworks.py:{function}",
                    "--state-dict", _weights(tmp_path, getattr(fw, function)()), "--data",
                    "digits", "-T", T, "--out", tmp_path / "runs")
        _one_line_refusal(r, *words)


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

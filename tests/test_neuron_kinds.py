"""Every neuron kind (edgeprune.neuron_kinds) through every backend: the torch module, its layer
description (what artifact ids hash), the streaming ONNX step, the C runtime, NIR write +
simulate and NIR read. Each kind × backend pair runs a tiny model with that kind and compares
with PyTorch, so a kind added without an emitter for some backend fails here, naming both."""
import os

import numpy as np
import pytest
import torch

from edgeprune import layers
from edgeprune.config import NeuronParams
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec
from edgeprune.neuron_kinds import (KINDS, ChargeParams, CubaParams, DecayParams, LIParams,
                                   RockpoolParams, SinabsParams, heaviside)

T = 4
# one parameter set per kind, away from the defaults and accepted by every backend (NIR has no
# subtracting reset and no LI with a synaptic current), and its description as ids hash it
PARAMS = {
    "lif": (NeuronParams(tau_mem_inv=0.3, v_th=0.4, v_reset=0.125),
            {"neuron": {"tau_mem_inv": 0.3, "v_th": 0.4, "v_reset": 0.125, "reset": "value",
                        "surrogate": "super", "alpha": 10.0}}),
    "li": (LIParams(tau_mem_inv=0.3), {"tau_mem_inv": 0.3, "tau_syn_inv": 1.0}),
    "cuba_lif": (CubaParams(tau_mem_inv=0.4, tau_syn_inv=0.3, v_th=0.5),
                 {"neuron": {"tau_mem_inv": 0.4, "tau_syn_inv": 0.3, "v_th": 0.5, "v_reset": 0.0,
                             "reset": "value", "surrogate": "super", "alpha": 100.0}}),
    "decay_lif": (DecayParams(beta=0.75, threshold=0.5, alpha_syn=0.5, reset="zero",
                              reset_delay=False),
                  {"neuron": {"beta": 0.75, "threshold": 0.5, "alpha_syn": 0.5, "reset": "zero",
                              "reset_delay": False, "surrogate": "super", "alpha": 10.0}}),
    "sinabs_lif": (SinabsParams(alpha_mem=0.75, threshold=0.5, norm_input=True, min_v=-1.0),
                   {"neuron": {"alpha_mem": 0.75, "threshold": 0.5, "norm_input": True,
                               "multi_spike": True, "reset": "subtract", "reset_value": 0.0,
                               "min_v": -1.0, "surrogate": "super", "alpha": 10.0}}),
    "charge_lif": (ChargeParams(tau=2.5, decay_input=False, v_threshold=0.625, v_reset=-0.25),
                   {"neuron": {"tau": 2.5, "q": None, "decay_input": False, "v_threshold": 0.625,
                               "v_reset": -0.25, "surrogate": "super", "alpha": 4.0}}),
    "rockpool_lif": (RockpoolParams(alpha_mem=0.75, alpha_syn=0.5, bias=0.125, threshold=0.5,
                                    max_spikes=3.0),
                     {"neuron": {"alpha_mem": 0.75, "alpha_syn": 0.5, "bias": 0.125,
                                 "threshold": 0.5, "max_spikes": 3.0, "surrogate": "super",
                                 "alpha": 10.0}}),
    "integrator": (KINDS["integrator"].params(), {}),
}
# the kinds NIR's own equations cannot read (a leak towards v_reset, multi-spike counts), read
# back under their framework's convention
# (SpikingJelly's file holds all of its LIF; Sinabs' leaves out min_v and norm_input)
STANDARD = {"charge_lif": "spikingjelly", "sinabs_lif": "sinabs", "rockpool_lif": "rockpool"}
WHOLE_IN_NIR = ("charge_lif",)  # (Rockpool's reading: all but max_spikes, 2^16 by default)
BACKENDS = ("torch", "description", "onnx step", "c", "nir write+simulate", "nir read")


def test_every_kind_has_a_test_parameter_set():
    assert set(PARAMS) == set(KINDS)


_built: dict = {}


def _model(key: str):
    """(spec, model, input, reference per-step logits) of flatten → linear → the kind →
    linear, with weights that make a spiking kind spike sometimes."""
    if key not in _built:
        kind = KINDS[key]
        desc = {"type": key, **kind.describe(PARAMS[key][0])}
        spec = ModelSpec(arch="sequential", input_shape=(1, 8, 8), timesteps=T, mean=(0.5,),
                         std=(0.25,),
                         layers=({"type": "flatten"}, {"type": "linear", "in": 64, "out": 24,
                                                        "bias": True},
                                 desc, {"type": "linear", "in": 24, "out": 10, "bias": True}))
        torch.manual_seed(0)
        model = spec.build().eval()
        with torch.no_grad():
            model.stem[1].weight.mul_(2.0)
            x = torch.rand(16, 1, 8, 8)
            ref = model(x, T).numpy()
        _built[key] = spec, model, x, ref
    return _built[key]


def _neuron(model):
    (m,) = [m for m in model.modules() if getattr(m, "kind", None) is not None]
    return m


def _torch(key, tmp_path):
    """The module is the kind's, names its states, and computes the kind's pure step run on
    float32 numpy arrays, bit for bit."""
    from edgeprune.neurons import MODULES

    _, model, x, _ = _model(key)
    m, kind, p = _neuron(model), KINDS[key], PARAMS[key][0]
    assert type(m) is MODULES[key] and m.params == p
    assert m.state_names == kind.states(p) and m.spiking == kind.spiking
    seq = torch.randn(T, 5, 24) * 2
    with torch.no_grad():
        got = m(seq).numpy()
    state = tuple(np.zeros((5, 24), np.float32) for _ in kind.states(p))
    for t in range(T):
        y, state = kind.step(seq[t].numpy(), state, p, heaviside)
        assert np.array_equal(y, got[t]) and y.dtype == np.float32
    if kind.spiking:
        assert 0.0 < got.mean() < 1.0


def _description(key, tmp_path):
    """The description (what checkpoints record and ids hash) keeps its layout, and rebuilds
    the same neuron."""
    _, model, _, _ = _model(key)
    d = layers.describe(_neuron(model))
    assert d == {"type": key, **PARAMS[key][1]}
    assert layers.build(d).params == PARAMS[key][0]


def _onnx_step(key, tmp_path):
    """The one-step graph with the kind's state as inputs/outputs, stepped T times in ONNX
    Runtime, gives the per-step logits."""
    import onnxruntime as ort

    from export.onnx_step import export_step

    _, model, x, ref = _model(key)
    info = export_step(model, (1, 8, 8), tmp_path / "m.step.onnx")
    names = KINDS[key].states(PARAMS[key][0])
    assert [s["layer"] for s in info["states"]] == \
        (["body.0"] if len(names) == 1 else [f"body.0.{n}" for n in names])
    sess = ort.InferenceSession(str(tmp_path / "m.step.onnx"))
    states = {s["input"]: np.zeros((16, *s["shape"]), np.float32) for s in info["states"]}
    for t in range(T):
        out = sess.run(None, {"input": x.numpy(), **states})
        states = {s["input"]: v for s, v in zip(info["states"], out[1:])}
        np.testing.assert_allclose(out[0], ref[t], atol=1e-5)


def _c(key, tmp_path):
    """Generated C, compiled and run, gives the logits summed over T."""
    from targets import tools

    if tools.CC.find() is None and os.environ.get("EDGEPRUNE_REQUIRE_CC") != "1":
        pytest.skip(f"no C compiler installed (apt-get install {tools.CC.package})")
    from export.c_codegen import write_c
    from export.c_program import program_from_model
    from targets import c_build, c_run

    spec, model, x, ref = _model(key)
    program = program_from_model(model, T, spec.input_shape)
    assert [op["kind"] for op in program["body"]] == [key, "linear"]
    summary = write_c(program, tmp_path / "c")
    assert summary["layers"][-2]["states"] == len(KINDS[key].states(PARAMS[key][0]))
    out = c_run.run(c_build.build(tmp_path / "c"), x.numpy()).logits
    np.testing.assert_allclose(out, ref.sum(0), atol=1e-4)


def _nir(key, tmp_path):
    """The NIR graph, simulated from its nodes' exact descriptions, gives the PyTorch model's
    spikes bit for bit (and its logits up to the summation order of the linear layers); by
    NIR's own equations it runs too."""
    import nir

    from export.nir_graph import write_nir
    from export.nir_sim import simulate

    _, model, x, ref = _model(key)
    write_nir(model, (1, 8, 8), T, tmp_path / "m.nir")
    graph = nir.read(str(tmp_path / "m.nir"))
    sim = simulate(graph, x.numpy(), T)
    np.testing.assert_allclose(sim["step_logits"], ref, atol=1e-5)
    if KINDS[key].spiking:
        with torch.no_grad():
            z = _neuron(model)(model.encode(x, T))
        assert np.array_equal(sim["spikes.body.0"], z.flatten(2).sum((0, 2)).numpy())
    assert simulate(graph, x.numpy(), T, exact=False)["step_logits"].shape == ref.shape


def _nir_read(key, tmp_path):
    """Read back, an edgeprune-written node is its exact description; read by NIR's
    parameters (the "nir" convention), its node type maps to a neuron kind."""
    from edgeprune.importers import nirfile
    from export.nir_graph import write_nir

    _, model, _, _ = _model(key)
    write_nir(model, (1, 8, 8), T, tmp_path / "m.nir")
    exact = nirfile.load(tmp_path / "m.nir", convention="edgeprune")
    (d,) = [l.desc for l in exact.layers if l.desc["type"] in KINDS]
    assert layers.build(d).params == PARAMS[key][0]
    standard = nirfile.load(tmp_path / "m.nir", convention=STANDARD.get(key, "nir"))
    (d,) = [l.desc for l in standard.layers if l.desc["type"] in KINDS]
    node = nirfile.read_file(tmp_path / "m.nir")["nodes"]["body.0"]["type"]
    assert d["type"] in nirfile.NEURON_READERS[node][0]
    if key in WHOLE_IN_NIR:  # the framework's own reading of the node it writes: the same neuron
        assert layers.build(d).params == PARAMS[key][0]
    assert key in {k for kinds, _ in nirfile.NEURON_READERS.values() for k in kinds}


RUN = {"torch": _torch, "description": _description, "onnx step": _onnx_step, "c": _c,
       "nir write+simulate": _nir, "nir read": _nir_read}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", sorted(KINDS))
def test_kind_runs_on_backend(key, backend, tmp_path):
    RUN[backend](key, tmp_path)


def test_steps_are_norses_bit_for_bit():
    """The box LIF, the leaky integrator and the current-based LIF are Norse's step functions
    (dt = 1), also for parameters that are not float32 values."""
    from norse.torch.functional.leaky_integrator import LIParameters, LIState, li_feed_forward_step
    from norse.torch.functional.lif import LIFFeedForwardState, LIFParameters, lif_feed_forward_step
    from norse.torch.functional.lif_box import (LIFBoxFeedForwardState, LIFBoxParameters,
                                                lif_box_feed_forward_step)
    from norse.torch.functional.reset import reset_subtract

    from edgeprune.neurons import LI, LIF, CubaLIF

    g = torch.Generator().manual_seed(0)
    x, v, i = (torch.randn(4000, generator=g) for _ in range(3))
    t = torch.as_tensor
    for reset in ("value", "subtract"):
        p = NeuronParams(tau_mem_inv=0.3, v_th=0.7, v_reset=0.1, reset=reset)
        z, v1 = LIF(p).step(x, v)
        nz, ns = lif_box_feed_forward_step(x, LIFBoxFeedForwardState(v), LIFBoxParameters(
            tau_mem_inv=t(0.3), v_leak=t(0.0), v_th=t(0.7), v_reset=t(0.1), method="super",
            alpha=t(10.0), **({"reset_method": reset_subtract} if reset == "subtract" else {})),
            dt=1.0)
        assert torch.equal(z, nz) and torch.equal(v1, ns.v) and 0 < float(z.mean()) < 1
    y, (v1, i1) = LI(LIParams(0.3, 0.7)).step(x, (v, i))
    ny, ns = li_feed_forward_step(x, LIState(v, i), LIParameters(
        tau_syn_inv=t(0.7), tau_mem_inv=t(0.3), v_leak=t(0.0)), dt=1.0)
    assert torch.equal(y, ny) and torch.equal(v1, ns.v) and torch.equal(i1, ns.i)
    z, (v1, i1) = CubaLIF(CubaParams(0.3, 0.7, v_th=0.2)).step(x, (v, i))
    nz, ns = lif_feed_forward_step(x, LIFFeedForwardState(v, i), LIFParameters(
        tau_syn_inv=t(0.7), tau_mem_inv=t(0.3), v_leak=t(0.0), v_th=t(0.2), v_reset=t(0.0)),
        dt=1.0)
    assert torch.equal(z, nz) and torch.equal(v1, ns.v) and torch.equal(i1, ns.i)


@pytest.mark.parametrize("key,bad,message", [
    ("lif", {"tau_mem_inv": 1.5}, r"tau_mem_inv must be in \(0, 1\], got 1.5"),
    ("lif", {"v_th": float("nan")}, "v_th must be a finite number"),
    ("cuba_lif", {"reset": "zero"}, "unknown current-based LIF reset 'zero'"),
    ("decay_lif", {"alpha_syn": -0.1}, r"alpha_syn must be in \[0, 1\]"),
    ("li", {"tau_syn_inv": 0.0}, r"tau_syn_inv \(times dt\) must be in \(0, 1\]"),
])
def test_parameters_are_checked_once_for_every_entry(key, bad, message, tmp_path):
    """A bad parameter is the kind's one message from Python, a layer description and a C
    program alike."""
    from export.c_codegen import write_c
    from export.c_program import program_from_model

    kind, p = KINDS[key], PARAMS[key][0]
    values = {**p.to_dict(), **bad}
    with pytest.raises(UserError, match=message):
        kind.params(**values)
    with pytest.raises(UserError, match=message):
        layers.build({"type": key, **({"neuron": values} if kind.nested else values)})
    spec, model, _, _ = _model(key)
    program = program_from_model(model, T, spec.input_shape)
    program["body"][0].update({k: v for k, v in bad.items() if k in program["body"][0]})
    with pytest.raises(UserError, match="C program: body.0: .*" + message):
        write_c(program, tmp_path)

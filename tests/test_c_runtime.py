"""The event-driven sparse C runtime: generated C99 vs PyTorch on real pruned models, built
natively, with ASan+UBSan, and for aarch64 under qemu-aarch64-static."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
import torch

from edgeprune.errors import UserError

from .conftest import ROOT, requires_cc, requires_cross_cc, skip_unless

T = 5
SPARSITY = 0.95
# |C - PyTorch| on the summed logits when no spike flips: only the summation order of the
# conv/linear sums differs (measured ~1e-6 on digits logits of magnitude ~10-40).
MAX_LOGIT_DIFF = 1e-4



def _digits():
    from edgeprune import data

    ds = data.load("digits")
    return ds


@pytest.fixture(scope="module")
def ticket(digits_model):
    """The trained digits convnet pruned to 95% by magnitude, fine-tuned one epoch with the
    mask held (so its layers still spike like a ticket's), in eval mode."""
    from edgeprune import checkpoint, masks
    from edgeprune.models import prunable
    from edgeprune.config import TrainConfig
    from edgeprune.training import Trainer

    spec, model = checkpoint.load(digits_model.file("model.pt"))
    mask = masks.prune(prunable(model), SPARSITY, "global")
    Trainer(model, _digits(), T, TrainConfig(epochs=1, lr=0.02), seed=0, masks=mask).train_epoch()
    return spec, model.eval()


@pytest.fixture(scope="module")
def reference(ticket):
    """PyTorch logits summed over T and per-LIF-layer spike counts on the digits test set."""
    from edgeprune.models import spiking_layers

    spec, model = ticket
    x = _digits().x_test
    counts = {}
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, n=n: counts.__setitem__(n, int(out.sum())))
        for n, m in spiking_layers(model).items()]
    try:
        with torch.no_grad():
            logits = model(x, T).sum(0).numpy()
    finally:
        for h in hooks:
            h.remove()
    return x.numpy(), logits, counts


@pytest.fixture(scope="module")
def generated(ticket, tmp_path_factory):
    from export.c_codegen import write_c
    from export.c_program import program_from_model

    spec, model = ticket
    program = program_from_model(model, T, spec.input_shape)
    folder = tmp_path_factory.mktemp("c-ticket")
    return program, write_c(program, folder), folder


@pytest.fixture(scope="module")
def native(generated):
    from targets import c_build

    skip_unless(requires_cc)
    return c_build.build(generated[2])


def test_program_is_torch_free_and_shaped(generated, ticket):
    program, summary, _ = generated
    spec, model = ticket

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert v is None or isinstance(v, (str, int, float, np.ndarray)), type(v)
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32

    walk(program)
    assert program["input_shape"] == [1, 8, 8] and program["num_classes"] == 10
    assert [op["kind"] for op in program["stem"]] == ["conv2d"]  # conv + folded BN, once
    assert [op["kind"] for op in program["body"]] == [
        "lif", "avgpool2d", "conv2d", "lif", "avgpool2d", "flatten", "linear", "lif", "linear"]
    # the C code stores exactly the non-zeros of the BN-folded weights (folding may zero a few
    # more, never revive one)
    from export.prepare import for_export

    def nonzeros(m):
        return sum(int((p != 0).sum()) for n, p in m.named_parameters() if n.endswith("weight")
                   and p.dim() > 1)

    nonzero = nonzeros(for_export(model))
    assert nonzero <= nonzeros(model)
    assert sum(l.get("nonzero", 0) for l in summary["layers"]) == nonzero


def test_generated_code_is_deterministic_and_sparse(generated, tmp_path):
    from export.c_codegen import write_c

    program, summary, _ = generated
    again = write_c(program, tmp_path)
    assert again["files"] == summary["files"]
    layers = {l["name"]: l for l in summary["layers"] if "weights" in l}
    assert layers["stem.0"]["mode"] == "dense"  # the image is dense: gather over weights
    assert all(layers[n]["mode"] == "event" for n in ("body.2", "body.7", "body.10"))
    assert layers["body.2"]["index_type"] == "uint8_t"  # 32 output channels fit a byte
    dense_bytes = 4 * sum(l["weights"] for l in layers.values())
    assert summary["weight_bytes"] < 0.2 * dense_bytes, (summary["weight_bytes"], dense_bytes)


def test_native_matches_pytorch_on_the_test_set(native, reference, generated):
    from targets import c_run

    x, ref, counts = reference
    assert native.warnings == "", native.warnings
    out = c_run.run(native, x, bench=(50, 5))
    assert out.mode == "native" and out.latency_note is None
    assert (out.logits.argmax(1) == ref.argmax(1)).all()
    diff = float(np.abs(out.logits - ref).max())
    assert diff < MAX_LOGIT_DIFF, diff
    assert len(out.latencies_ms) == 50 and min(out.latencies_ms) > 0
    assert set(out.percentiles()) == {"p50", "p95", "p99"}
    # spikes: the same count per layer (a flip needs a potential within rounding of v_th)
    stats = c_run.spike_counts(native, x)
    got = {l["name"]: l["spikes"] for l in stats["layers"]}
    assert set(got) == set(counts)
    for name, n in counts.items():
        assert n > 0, f"{name} is silent: the parity check would be vacuous"
        assert abs(got[name] - n) <= max(2, 1e-4 * n), (name, got[name], n)


def test_object_is_small(native, generated):
    summary = generated[1]
    weights = native.sizes["model_weights.o"]
    assert weights["rodata"] >= summary["weight_bytes"] - 64
    assert weights["text"] == 0 and native.sizes["model.o"]["data"] < 1024


def _run_raw(runner, args=(), stdin=b""):
    return subprocess.run([str(runner), *args], input=stdin, capture_output=True, timeout=120)


def test_sanitizer_build_is_clean(generated, native, reference):
    from targets import c_build, c_run

    asan = c_build.build(generated[2], sanitize=True)
    x, _, _ = reference
    out = c_run.run(asan, x, bench=(3, 1))
    assert np.array_equal(out.logits, c_run.run(native, x).logits)
    image = x[:1].astype("<f4").tobytes()
    for stdin, args, needle in (
            (b"", (), "empty input"),
            (image[:-1], (), "not a whole number"),
            (image + image[:7], (), "not a whole number"),
            (b"\x00" * 3, ("--bench", "5", "1"), "not a whole number"),
            (image, ("--bench", "0", "1"), "RUNS must be"),
            (image, ("--bench", "5", "-1"), "RUNS must be"),
            (image, ("--bench", "9" * 30, "1"), "RUNS must be"),
            (image, ("--nope",), "usage"),
            (b"", ("--stats",), "empty input")):
        p = _run_raw(asan.runner, args, stdin)
        err = p.stderr.decode()
        assert p.returncode == 2 and needle in err, (args, p.returncode, err)
        assert len(err.strip().splitlines()) == 1 and p.stdout == b"", (args, err)
    # NaN/inf pixels are computed, not crashed on
    bad = x[:2].copy()
    bad[0, 0, 0, 0], bad[1, 0, 1, 1] = np.nan, np.inf
    p = _run_raw(asan.runner, (), bad.astype("<f4").tobytes())
    assert p.returncode == 0 and len(p.stdout) == 2 * 10 * 4, p.stderr.decode()[-500:]


@requires_cross_cc
def test_aarch64_under_qemu_matches_native(generated, native, reference):
    from targets import c_build, c_run

    arm = c_build.build(generated[2], isa="aarch64", mcpu="cortex-a72")
    assert arm.isa == "aarch64" and not arm.native and arm.static
    assert arm.warnings == "", arm.warnings
    x = reference[0][:24]
    out = c_run.run(arm, x, bench=(5, 1), qemu_cpu="cortex-a72")
    assert out.mode == "emulated" and "not indicative" in out.latency_note
    # same float32 operations in the same order: bit-identical to the x86-64 build
    assert np.array_equal(out.logits, c_run.run(native, x).logits)
    assert c_run.info(arm)["num_classes"] == 10


# -- other models -------------------------------------------------------------------------------

def _sequential(layers, input_shape=(1, 8, 8), neuron=None, seed=0):
    from edgeprune.models import ModelSpec
    from edgeprune.config import NeuronParams

    spec = ModelSpec(arch="sequential", input_shape=input_shape, num_classes=10,
                     mean=(0.3,), std=(0.4,), neuron=neuron or NeuronParams(),
                     layers=tuple(layers))
    torch.manual_seed(seed)
    return spec, spec.build().eval()


def _c_vs_torch(spec, model, tmp_path, timesteps=T, edit=None, reference=None, x=None):
    from export.c_codegen import write_c
    from export.c_program import program_from_model
    from targets import c_build, c_run

    skip_unless(requires_cc)
    program = program_from_model(model, timesteps, spec.input_shape)
    if edit:
        edit(program)
    write_c(program, tmp_path)
    x = _digits().x_test[:120] if x is None else x
    with torch.no_grad():
        ref = (reference(x) if reference else model(x, timesteps).sum(0)).numpy()
    out = c_run.run(c_build.build(tmp_path), x.numpy()).logits
    return out, ref, program


LI_LAYERS = [
    {"type": "conv2d", "in": 1, "out": 8, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
     "bias": True},
    {"type": "bn2d", "features": 8},
    {"type": "lif", "neuron": {"tau_mem_inv": 0.5, "v_th": 0.8, "v_reset": 0.1,
                               "reset": "subtract"}},
    {"type": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]},
    {"type": "conv2d", "in": 8, "out": 12, "kernel": [3, 3], "stride": [2, 2],
     "padding": [1, 1], "bias": False},
    {"type": "lif", "neuron": {"tau_mem_inv": 0.75}},
    {"type": "flatten"},
    {"type": "linear", "in": 48, "out": 10, "bias": True},
    {"type": "li", "tau_mem_inv": 0.3, "tau_syn_inv": 0.6},
]


def test_li_readout_maxpool_stride_and_subtract_reset(tmp_path):
    """Norse LI readout (v and synaptic current), max pooling of spikes, a stride-2 conv and
    LIF with subtract reset and non-zero v_reset, with pruned weights and a real BN fold."""
    from edgeprune import masks
    from edgeprune.models import prunable

    spec, model = _sequential(LI_LAYERS)
    with torch.no_grad():
        bn = model.stem[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(0.2, 0.6)
        for p in prunable(model).values():
            p.mul_(3.0)
    masks.apply(model, masks.prune(prunable(model), 0.6, "global"))
    out, ref, program = _c_vs_torch(spec, model, tmp_path)
    assert program["body"][-1]["kind"] == "li"
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.abs(out - ref).max() < MAX_LOGIT_DIFF * max(1.0, np.abs(ref).max())


VARIETY_LAYERS = [
    # stem: two convs on dense input (gather path): non-square kernel, stride 2x1, padding 1x0
    {"type": "conv2d", "in": 1, "out": 6, "kernel": [3, 2], "stride": [2, 1], "padding": [1, 0],
     "bias": True},
    {"type": "conv2d", "in": 6, "out": 4, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
     "bias": False},
    {"type": "lif", "neuron": {"tau_mem_inv": 0.75}},
    {"type": "adaptiveavgpool2d", "output": [2, 7]},  # 4x7 -> 2x7: windows 2x1
    {"type": "flatten"},
    {"type": "linear", "in": 56, "out": 20, "bias": True},  # pooled spikes: events times value
    {"type": "dropout", "p": 0.5},
    {"type": "linear", "in": 20, "out": 10, "bias": True},  # dense input: gather path
    {"type": "lif", "neuron": {"tau_mem_inv": 0.5, "v_th": 0.5}},  # logits = spike counts
]


def test_gather_paths_adaptive_pool_and_spiking_output(tmp_path):
    from edgeprune import masks
    from edgeprune.models import prunable

    spec, model = _sequential(VARIETY_LAYERS, seed=3)
    with torch.no_grad():
        for p in prunable(model).values():
            p.mul_(4.0)
    masks.apply(model, masks.prune(prunable(model), 0.5, "global"))
    out, ref, program = _c_vs_torch(spec, model, tmp_path)
    assert [op["kind"] for op in program["stem"]] == ["conv2d", "conv2d"]
    assert "dropout" not in [op["kind"] for op in program["body"]]
    assert ref.max() > 0 and ref.min() < T  # the readout neurons do spike, not always
    # spike counts: equal unless a potential lands within rounding of the threshold
    assert (out != ref).mean() < 0.01, np.argwhere(out != ref)[:5]


def test_step_bias_is_added_per_step(ticket, tmp_path):
    """step_bias (T, O) on a body conv and a body linear: the reference adds the same per-step
    constants to those layers' outputs in the prepared PyTorch model."""
    from export.prepare import for_export

    spec, model = ticket
    g = torch.Generator().manual_seed(1)
    sb_conv = (torch.rand((T, 32), generator=g) - 0.5) * 0.6
    sb_lin = (torch.rand((T, 128), generator=g) - 0.5) * 0.6
    prepared = for_export(model)

    def add(sb):
        def hook(_m, _i, out):  # stateless layers see all T steps folded into the batch
            seq = out.reshape(T, -1, *out.shape[1:])
            shape = (T, 1, sb.shape[1]) + (1,) * (out.dim() - 2)
            return (seq + sb.view(shape)).reshape(out.shape)
        return hook

    prepared.body[2].register_forward_hook(add(sb_conv))
    prepared.body[7].register_forward_hook(add(sb_lin))

    def edit(program):
        by_name = {op["name"]: op for op in program["body"]}
        by_name["body.2"]["step_bias"] = sb_conv.numpy().astype(np.float32)
        by_name["body.7"]["step_bias"] = sb_lin.numpy().astype(np.float32)

    out, ref, _ = _c_vs_torch(spec, model, tmp_path, edit=edit,
                              reference=lambda x: prepared(x, T).sum(0))
    with torch.no_grad():
        plain = model(_digits().x_test[:120], T).sum(0).numpy()
    assert np.abs(plain - ref).max() > 0.1  # the step bias changes the output
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert np.abs(out - ref).max() < MAX_LOGIT_DIFF


# -- refusals and errors ---------------------------------------------------------------------------

def test_unsupported_models_are_refused_naming_the_layer():
    from edgeprune.models import ModelSpec
    from export.c_program import program_from_model

    res = ModelSpec(arch="resnet19", width=0.0625, input_shape=(1, 8, 8)).build()
    with pytest.raises(UserError, match=r"body\.1 \(SpikingBasicBlock\)"):
        program_from_model(res, T)
    poisson = ModelSpec(encoding="poisson").build()
    with pytest.raises(UserError, match="poisson"):
        program_from_model(poisson, T)
    grouped = [dict(LI_LAYERS[0], out=8), {"type": "lif", "neuron": {}},
               {"type": "conv2d", "in": 8, "out": 8, "kernel": [3, 3], "stride": [1, 1],
                "padding": [1, 1], "bias": False, "groups": 2},
               {"type": "lif", "neuron": {}}, {"type": "flatten"},
               {"type": "linear", "in": 512, "out": 10, "bias": True}]
    with pytest.raises(UserError, match=r"body\.1 \(Conv2d\): groups=2"):
        program_from_model(_sequential(grouped)[1], T, (1, 8, 8))
    unfolded = [LI_LAYERS[0], {"type": "lif", "neuron": {}}, {"type": "bn2d", "features": 8},
                {"type": "flatten"}, {"type": "linear", "in": 512, "out": 10, "bias": True},
                {"type": "lif", "neuron": {}}]
    with pytest.raises(UserError, match=r"body\.1 \(BatchNorm2d\)"):
        program_from_model(_sequential(unfolded)[1], T, (1, 8, 8))
    with pytest.raises(UserError, match="timesteps"):
        program_from_model(ModelSpec().build(), 0)


def test_input_shape_is_inferred_for_builtin_archs():
    from edgeprune.models import ModelSpec
    from export.c_program import program_from_model

    for shape in ((1, 8, 8), (1, 28, 28), (3, 16, 16)):
        model = ModelSpec(input_shape=shape, mean=(0.5,) * shape[0],
                          std=(0.25,) * shape[0]).build()
        assert program_from_model(model, 2)["input_shape"] == list(shape)


def test_missing_compilers_name_the_package(generated, tmp_path, monkeypatch):
    from targets import c_build

    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler, no qemu on this PATH
    with pytest.raises(UserError, match="apt-get install gcc`"):
        c_build.build(generated[2], tmp_path / "a")
    if c_build.host_isa() == "x86_64":
        with pytest.raises(UserError, match="gcc-aarch64-linux-gnu"):
            c_build.build(generated[2], tmp_path / "b", isa="aarch64")
    with pytest.raises(UserError, match="native only"):
        c_build.build(generated[2], tmp_path / "c", isa="aarch64", sanitize=True)


def test_c_modules_never_import_torch(native, reference):
    """codegen of a saved program, build and run with torch made unimportable."""
    code = f"""
import sys; sys.modules['torch'] = None
import numpy as np
from pathlib import Path
from targets import c_build, c_run
import export.c_codegen
b = c_build.build(Path({str(native.folder.parent)!r}), Path({str(native.folder.parent / 'tf')!r}))
x = np.zeros((2, 1, 8, 8), np.float32)
assert c_run.run(b, x).logits.shape == (2, 10)
assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m])
print('ok')
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]


@pytest.fixture(scope="module")
def asan_build(generated):
    from targets import c_build

    return c_build.build(generated[2], sanitize=True)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=3 * 64 * 4 + 9),
       args=st.sampled_from([(), ("--stats",), ("--info",), ("--bench", "2", "1"),
                             ("--bench", "x", "1"), ("--bench",), ("-",)]))
def test_runner_stdin_fuzz_never_crashes(asan_build, blob, args):
    """Hostile stdin and arguments to the sanitizer build: whole images give logits, anything
    else one line and exit 2; never a sanitizer report or a signal."""
    p = _run_raw(asan_build.runner, args, blob)
    err = p.stderr.decode(errors="replace")
    assert "Sanitizer" not in err and "runtime error" not in err, err[-800:]
    assert p.returncode in (0, 2), (p.returncode, err[-300:])
    if p.returncode == 2:
        assert len(err.strip().splitlines()) == 1 and p.stdout == b""
    elif not args:
        assert len(blob) % (64 * 4) == 0 and len(p.stdout) == len(blob) // (64 * 4) * 10 * 4


# 24x24 input: the event conv's planes (576 positions) and the linear's pooled input (864
# values) span several chunks of the event lists (export/c_ops.EVENT_CHUNK = 256), partial last
# chunks included
CHUNKED_LAYERS = [
    {"type": "conv2d", "in": 1, "out": 4, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
     "bias": True},
    {"type": "lif", "neuron": {"tau_mem_inv": 0.5, "v_th": 0.5}},
    {"type": "conv2d", "in": 4, "out": 6, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
     "bias": False},  # binary events
    {"type": "lif", "neuron": {"tau_mem_inv": 0.5, "v_th": 0.5}},
    {"type": "avgpool2d", "kernel": [2, 2], "stride": [2, 2]},
    {"type": "flatten"},
    {"type": "linear", "in": 864, "out": 10, "bias": True},  # pooled spikes: valued events
]


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """CHUNKED_LAYERS pruned to 70%, its C built natively: (folder, build, images, C logits,
    PyTorch logits, program)."""
    from edgeprune import masks
    from edgeprune.models import prunable
    from targets import c_build

    spec, model = _sequential(CHUNKED_LAYERS, input_shape=(1, 24, 24), seed=1)
    with torch.no_grad():
        for q in prunable(model).values():
            q.mul_(3.0)
    masks.apply(model, masks.prune(prunable(model), 0.7, "global"))
    x = torch.from_numpy(np.kron(_digits().x_test[:60].numpy(), np.ones((1, 1, 3, 3),
                                                                        np.float32)))
    folder = tmp_path_factory.mktemp("chunked")
    out, ref, program = _c_vs_torch(spec, model, folder, x=x)
    return folder, c_build.build(folder), x.numpy(), out, ref, program


def test_event_lists_across_chunks_match_pytorch_and_sanitized(chunked):
    from export.c_ops import EVENT_CHUNK
    from export.c_plan import plan
    from targets import c_build, c_run

    folder, native, x, out, ref, program = chunked
    kinds = [(op["kind"], op["in_kind"], op["in_shape"]) for op in plan(program)["body"]]
    assert ("conv2d", "binary", [4, 24, 24]) in kinds and 24 * 24 > 2 * EVENT_CHUNK
    assert ("linear", "sparse", [864]) in kinds and 864 % EVENT_CHUNK != 0
    assert 0 < ref.std()  # the net does respond to its input
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.98
    assert np.abs(out - ref).max() < MAX_LOGIT_DIFF * max(1.0, np.abs(ref).max())
    asan = c_build.build(folder, folder / "asan", sanitize=True)
    assert asan.warnings == "", asan.warnings
    np.testing.assert_array_equal(c_run.run(asan, x[:20]).logits, out[:20])


@requires_cross_cc
def test_event_lists_across_chunks_under_qemu_match_native(chunked):
    from targets import c_build, c_run

    folder, native, x, out, *_rest = chunked
    arm = c_build.build(folder, folder / "arm", isa="aarch64", mcpu="cortex-a72")
    assert arm.warnings == "", arm.warnings
    np.testing.assert_array_equal(c_run.run(arm, x[:20]).logits, out[:20])

# -- vectorized kernels (dense rows everywhere) and the profiling build ------------------------

def _dense_rows_models():
    """(name, spec, model) with convs of every shape the dense-row kernels handle: the digits
    ticket (16/32 channels), LI_LAYERS (8 -> 12 channels: padded lanes, stride 2, max pooling
    of spikes), VARIETY_LAYERS (two stem convs on dense input: 6 and 4 channels, a 3x2 kernel,
    stride 2x1, padding 1x0)."""
    from edgeprune import masks
    from edgeprune.models import prunable

    out = []
    for name, layers, seed, scale, sparsity in (("li", LI_LAYERS, 0, 3.0, 0.6),
                                                ("variety", VARIETY_LAYERS, 3, 4.0, 0.5)):
        spec, model = _sequential(layers, seed=seed)
        with torch.no_grad():
            for p in prunable(model).values():
                p.mul_(scale)
        masks.apply(model, masks.prune(prunable(model), sparsity, "global"))
        out.append((name, spec, model))
    return out


@pytest.fixture(scope="module")
def dense_rows(ticket, tmp_path_factory):
    """Each model's C with every conv stored as dense rows (threshold 0), built natively, and
    its PyTorch logits on 120 digits test images."""
    from export.c_codegen import write_c
    from export.c_program import choose_dense_rows, program_from_model
    from targets import c_build

    skip_unless(requires_cc)
    x = _digits().x_test[:120]
    built = {}
    for name, spec, model in [("ticket", *ticket), *_dense_rows_models()]:
        program = program_from_model(model, T, spec.input_shape)
        marked = choose_dense_rows(program, 0.0)
        folder = tmp_path_factory.mktemp(f"rows-{name}")
        summary = write_c(program, folder)
        with torch.no_grad():
            ref = model(x, T).sum(0).numpy()
        built[name] = (folder, c_build.build(folder), ref, marked, summary)
    return x.numpy(), built


def test_dense_row_kernels_match_pytorch_native_and_sanitized(dense_rows):
    from targets import c_build, c_run

    x, built = dense_rows
    convs = {"ticket": ["stem.0", "body.2"], "li": ["stem.0", "body.2"],
             "variety": ["stem.0", "stem.1"]}
    for name, (folder, native, ref, marked, summary) in built.items():
        assert marked == convs[name], (name, marked)
        modes = {l["name"]: l["mode"] for l in summary["layers"] if "mode" in l}
        assert all(modes[n].endswith("dense rows") for n in marked), modes
        assert native.warnings == "", native.warnings
        out = c_run.run(native, x).logits
        if name == "variety":  # logits are spike counts: equal unless a potential ties v_th
            assert (out != ref).mean() < 0.01, name
        else:
            assert (out.argmax(1) == ref.argmax(1)).mean() >= (1.0 if name == "ticket" else 0.99)
            assert np.abs(out - ref).max() < MAX_LOGIT_DIFF * max(1.0, np.abs(ref).max()), name
        asan = c_build.build(folder, sanitize=True)
        np.testing.assert_array_equal(c_run.run(asan, x[:40]).logits, out[:40])


def test_dense_rows_are_the_sparse_rows_bits(dense_rows, ticket, tmp_path):
    """Dense rows only change the storage: each output's sum has the same terms in the same
    order (zeros added as +0), so the logits are bit-identical to sparse rows."""
    from export.c_codegen import write_c
    from export.c_program import program_from_model
    from targets import c_build, c_run

    x, built = dense_rows
    spec, model = ticket
    write_c(program_from_model(model, T, spec.input_shape), tmp_path)
    sparse = c_run.run(c_build.build(tmp_path), x).logits
    np.testing.assert_array_equal(c_run.run(built["ticket"][1], x).logits, sparse)


@requires_cross_cc
def test_dense_row_kernels_under_qemu_match_native(dense_rows):
    from targets import c_build, c_run

    x, built = dense_rows
    for name, (folder, native, *_rest) in built.items():
        arm = c_build.build(folder, folder / "arm", isa="aarch64", mcpu="cortex-a72")
        assert arm.warnings == "", arm.warnings
        np.testing.assert_array_equal(c_run.run(arm, x[:24]).logits,
                                      c_run.run(native, x[:24]).logits)


def test_profiling_build_times_every_layer(generated, native, reference, tmp_path):
    """-DMODEL_PROFILE: the same logits, a time for every layer of the summary (plus "other"),
    and the hook only in the profiling build: the normal model.o has no clock or hook."""
    from targets import c_build, c_profile, c_run

    _, summary, folder = generated
    x = reference[0][:30]
    prof = c_profile.measure(c_profile.build(folder, tmp_path / "p"), x, runs=40, warmup=2)
    names = [l["name"] for l in prof["layers"]]
    assert names == [l["name"] for l in summary["layers"]] + ["other"]
    assert [l["kind"] for l in prof["layers"][:-1]] == [l["kind"] for l in summary["layers"]]
    assert all(l["ms"] >= 0 for l in prof["layers"]) and prof["total_ms"] > 0
    assert abs(sum(l["share"] for l in prof["layers"]) - 1.0) < 1e-6
    conv = next(l for l in prof["layers"] if l["name"] == "body.2")
    assert conv["ms"] > 0  # the event conv does measurable work
    profiled = c_build.build(folder, tmp_path / "p2", extra_flags=(c_profile.FLAG,))
    np.testing.assert_array_equal(c_run.run(profiled, x).logits, c_run.run(native, x).logits)
    assert b"profile_mark" in (profiled.folder / "model.o").read_bytes()
    plain = (native.folder / "model.o").read_bytes()
    assert b"profile_mark" not in plain and b"clock_gettime" not in plain
    p = _run_raw(native.runner, ("--profile", "5", "1"), x[:1].astype("<f4").tobytes())
    assert p.returncode == 2 and b"-DMODEL_PROFILE" in p.stderr and p.stdout == b""
    lines = c_profile.markdown(prof, "c-x86_64")
    assert any(l.startswith("| body.2 | conv2d |") for l in lines)


def test_profiling_runner_under_sanitizers(generated, reference, tmp_path):
    from targets import c_build

    _, _, folder = generated
    asan = c_build.build(folder, tmp_path / "asan", sanitize=True, extra_flags=("-DMODEL_PROFILE",))
    image = reference[0][:2].astype("<f4").tobytes()
    p = _run_raw(asan.runner, ("--profile", "3", "1"), image)
    assert p.returncode == 0, p.stderr.decode()[-800:]
    out = json.loads(p.stdout)
    assert out["runs"] == 3 and all(len(l["ms"]) == 3 for l in out["layers"])
    for args in (("--profile", "0", "1"), ("--profile", "100001", "1"), ("--profile", "x", "1")):
        p = _run_raw(asan.runner, args, image)
        assert p.returncode == 2 and b"RUNS must be" in p.stderr, args

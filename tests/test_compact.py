"""Exact compaction (export/compact.py): a 97%-pruned digits convnet, with dead units that spike
and dead units that stay silent, compacted and compared with the folded original on the whole
test set: in PyTorch, in ONNX Runtime (spike counts and logits) and in the C runtime."""

import numpy as np
import pytest
import torch

from .conftest import requires_cc

T = 5


@pytest.fixture(scope="module")
def pruned(digits_model):
    """The suite's dense digits model at 97% global magnitude sparsity, plus dead units set up
    by hand so that every case occurs: a dead stem channel that spikes (its pattern reaches a
    padded conv: a per-position per-step bias), a silent one, a dead conv channel that spikes
    (through pooling and flatten into the linear layer: a per-channel per-step bias), and dead
    hidden neurons that spike (into the classifier)."""
    from edgeprune import checkpoint, masks
    from edgeprune.models import prunable

    spec, model = checkpoint.load(digits_model.file("model.pt"))
    masks.apply(model, masks.prune(prunable(model), 0.97, "global"))

    def plain(bn, i):  # the BN of a channel retrained dead: its folded bias is its beta
        bn.running_mean[i], bn.running_var[i], bn.weight[i] = 0.0, 1.0, 1.0

    with torch.no_grad():
        for bn, i in ((model.stem[1], 3), (model.stem[1], 5), (model.body[3], 7)):
            plain(bn, i)
        model.stem[0].weight[3] = 0
        model.stem[1].bias[3] = 2.0  # spikes every other step
        model.stem[0].weight[5] = 0
        model.stem[1].bias[5] = -1.0  # never spikes
        model.body[2].weight[7] = 0
        model.body[3].bias[7] = 1.2
        model.body[2].weight[:, 7] = 0.0  # a channel of conv2's input nobody reads...
        model.body[2].weight[0, 7, 1, 1] = 0.5  # ...but one
        model.body[2].weight[1, 3] = 0.3  # conv2 reads the spiking dead stem channel...
        live = int(model.stem[0].weight.abs().flatten(1).sum(1).argmax())
        model.body[2].weight[1, live, 1, 1] = 0.5  # ...and a live one
        # the busiest hidden neuron reads conv2's channel 1 (which reads the dead stem channel)
        # and the dead conv2 channel 7 (2x2 features per channel after pooling and flatten)
        r = int(model.body[7].weight.ne(0).sum(1).argmax())
        model.body[7].weight[r, 1 * 4:2 * 4] = 0.05
        model.body[7].weight[r, 7 * 4:8 * 4] = 0.05
        w = model.body[7].weight
        dead = (w.abs().sum(1) == 0).nonzero().flatten()
        assert len(dead) >= 10, "the 97% ticket should leave dead hidden neurons"
        for i in dead[:10]:
            plain(model.body[8], int(i))
        model.body[8].bias[dead[:10]] = torch.linspace(1.0, 3.0, 10)
        model.body[10].weight[0, dead[:10]] = 0.1  # the classifier reads them
    return spec, model.eval()


@pytest.fixture(scope="module")
def compacted(pruned):
    from export.compact import compact

    spec, model = pruned
    c, why = compact(model, T, spec.input_shape)
    assert why is None
    return c


def _test_images():
    from edgeprune import data

    ds = data.load("digits")
    return ds.x_test.float(), ds.y_test.numpy()


def test_compaction_removes_dead_units_and_keeps_every_spike(pruned, compacted):
    from export.compact import check

    _spec, model = pruned
    layers = {l["name"]: l for l in compacted.layers}
    # the two dead stem channels are gone (pruning may have killed more)
    assert layers["stem.0"]["removed_dead_outputs"] >= 2
    assert layers["stem.0"]["shape_after"][0] == 16 - layers["stem.0"]["removed_dead_outputs"] \
        - layers["stem.0"]["removed_unused_outputs"]
    assert layers["body.2"]["step_bias"] == [T, layers["body.2"]["shape_after"][0], 4, 4]
    assert layers["body.7"]["shape_after"][0] < 128 and layers["body.7"]["shape_after"][1] < 512
    assert layers["body.7"]["step_bias"] == [T, layers["body.7"]["shape_after"][0]]
    assert layers["body.10"]["step_bias"] == [T, 10]  # the spiking dead hidden neurons
    assert compacted.step_biases
    assert compacted.constant_spikes["body.0"] > 0 and compacted.constant_spikes["body.9"] > 0
    x, _ = _test_images()
    proof = check(model, compacted, x)
    assert proof["inputs"] == len(x) == 360
    assert proof["spike_mismatches"] == 0, proof
    assert proof["max_abs_logit_diff"] <= 1e-5, proof
    assert proof["prediction_agreement"] == 1.0
    assert proof["spikes_compared"] > 0


def test_compacted_onnx_matches_uncompacted_on_onnx_runtime(pruned, compacted, tmp_path):
    """Both exported with per-sample spike counts. The compacted graph counts the neurons it
    computes plus the fixed spikes of the dead ones it removed (neurons nothing reads are gone
    and not counted): equal, exactly, to those neurons' spikes in the folded PyTorch model.
    Logits within 1e-5 of the uncompacted graph; the file is smaller."""
    from export.compact import _run_recording
    from export.prepare import for_export

    from export.onnx_files import UNROLLED, write_onnx
    from export.parity import run_unrolled, session

    spec, model = pruned
    x, _ = _test_images()
    model.constant_spikes = {}
    (tmp_path / "full").mkdir()
    (tmp_path / "small").mkdir()
    full = write_onnx(spec, model, tmp_path / "full", timesteps=T, outputs="all", step=False)
    deploy = compacted.model
    deploy.constant_spikes = compacted.constant_spikes
    small = write_onnx(spec, deploy, tmp_path / "small", timesteps=T, outputs="all", step=False,
                       meta_model=model)
    a = run_unrolled(session(tmp_path / "full" / UNROLLED), x.numpy())
    b = run_unrolled(session(tmp_path / "small" / UNROLLED), x.numpy())
    assert np.abs(a["logits"] - b["logits"]).max() <= 1e-5
    assert np.abs(a["step_logits"] - b["step_logits"]).max() <= 1e-5
    spikes = [k for k in a if k.startswith("spikes.")]
    assert spikes == ["spikes.body.0", "spikes.body.4", "spikes.body.9"]
    _steps, per_neuron = _run_recording(for_export(model), x, T)
    for k in spikes:
        layer = k[len("spikes."):]
        units = compacted.kept_units[layer] + [u for u, _ in compacted.dead_patterns.get(layer, [])]
        want = per_neuron[layer][:, :, units].transpose(0, 1).flatten(1).sum(1).numpy()
        np.testing.assert_array_equal(b[k], want)
        assert (a[k] >= b[k]).all()  # the full graph also counts neurons nothing reads
    assert small[UNROLLED]["bytes"] < full[UNROLLED]["bytes"]


@requires_cc
def test_compacted_c_runtime_with_per_position_step_bias(pruned, compacted, tmp_path):
    """The C runtime computes the compacted program (incl. a (T, O, H, W) step bias), also under
    ASan+UBSan, and agrees with the folded original."""
    from export.c_codegen import write_c
    from export.c_program import program_from_model
    from targets import c_build, c_run

    spec, model = pruned
    x, y = _test_images()
    program = program_from_model(compacted.model, T, spec.input_shape)
    conv2 = next(op for op in program["body"] if op["name"] == "body.2")
    assert conv2["step_bias"].shape[0] == T and conv2["step_bias"].ndim == 4
    write_c(program, tmp_path / "c")
    with torch.no_grad():
        ref = model(x, T).sum(0).numpy()
    out = c_run.run(c_build.build(tmp_path / "c"), x.numpy())
    assert (out.logits.argmax(1) == ref.argmax(1)).mean() == 1.0
    assert np.abs(out.logits - ref).max() <= 1e-4
    san = c_run.run(c_build.build(tmp_path / "c", sanitize=True), x.numpy()[:20])
    np.testing.assert_allclose(san.logits, out.logits[:20], atol=1e-5)
    # dense-row storage (vectorized updates, the stem's on dense input too): the same sums
    # in the same order, same bits
    from export.c_program import choose_dense_rows

    assert choose_dense_rows(program, 0.0) == ["stem.0", "body.2"]
    write_c(program, tmp_path / "rows")
    rows = c_build.build(tmp_path / "rows", extra_flags=("-march=x86-64-v3",)
                         if _has_avx2() else ())
    np.testing.assert_array_equal(c_run.run(rows, x.numpy()).logits, out.logits)
    san = c_run.run(c_build.build(tmp_path / "rows", sanitize=True), x.numpy()[:20])
    np.testing.assert_array_equal(san.logits, out.logits[:20])


def _has_avx2() -> bool:
    try:
        return " avx2" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def test_residual_models_are_left_uncompacted():
    from edgeprune.config import ModelConfig
    from edgeprune.models import ModelSpec
    from export.compact import compact

    spec = ModelSpec(arch="resnet19", width=0.125, input_shape=(1, 8, 8))
    c, why = compact(spec.build().eval(), T, spec.input_shape)
    assert c is None and "SpikingBasicBlock" in why
    assert ModelConfig  # the config module stays importable without torch-only deps


def test_aligned_compaction_keeps_conv_channels_a_multiple_and_stays_exact(pruned, compacted):
    """For ONNX Runtime (blocked convolutions) conv channel counts stay multiples of 16; the
    units that keeps are computed as before, so the result is still exact."""
    from export.compact import check, compact

    spec, model = pruned
    aligned, _ = compact(model, T, spec.input_shape, align=16)
    shapes = {l["name"]: l["shape_after"] for l in aligned.layers}
    free = {l["name"]: l["shape_after"] for l in compacted.layers}
    before = {l["name"]: l["shape_before"] for l in compacted.layers}
    for name in ("stem.0", "body.2"):
        # a multiple of 16 that still holds every channel the unaligned compaction keeps
        # (how many more it keeps depends on the trained ticket, so no exact count here)
        assert shapes[name][0] % 16 == 0
        assert free[name][0] <= shapes[name][0] <= before[name][0]
    assert shapes["body.7"][0] == free["body.7"][0]  # linear layers are not aligned
    x, _ = _test_images()
    proof = check(model, aligned, x)
    assert proof["spike_mismatches"] == 0 and proof["max_abs_logit_diff"] <= 1e-5

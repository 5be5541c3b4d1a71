"""Device-aware tickets: `--scope cost` (weights ranked per use, edgeprune/weight_uses.py) and
`--granularity channel` (edgeprune/channels.py): uses counted by hand, exact sparsity for every
method family, channel masks' semantics and guard, and exact compaction of a channel ticket."""

import numpy as np
import pytest
import torch
from torch import nn

import pipeline
from edgeprune import channels, masks as masklib, tensorfile, weight_uses
from edgeprune.config import EarlyBirdSettings, ImpSettings, RetrainConfig, SearchConfig
from edgeprune.criteria import CRITERIA, NAMES
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec, prunable
from edgeprune.search.search_stage import search

from .conftest import run_cli, small_dense


# -- uses per inference, by hand -------------------------------------------------------------

class Tiny(nn.Module):
    """A padded 3x3 conv on the image (run once, as direct encoding runs the stem), then a
    linear layer fed fixed spikes at every step and a stride-2 conv fed a fixed spike map."""

    def __init__(self, spikes: torch.Tensor, smap: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.lin = nn.Linear(4, 3)
        self.down = nn.Conv2d(1, 1, 2, stride=2, bias=False)
        self.spikes, self.smap = spikes, smap

    def forward(self, x, timesteps):
        self.conv(x)
        self.lin(self.spikes)  # (T*B, 4): T folded into the batch, as over_time does
        self.down(self.smap)
        return x


def test_uses_per_inference_are_counted_by_hand():
    T, B = 2, 2
    x = torch.rand(B, 1, 3, 3) + 0.5  # a normalized image: no zero pixel
    spikes = torch.tensor([[1., 0, 1, 0], [1, 0, 0, 0],   # t=0, images 0 and 1
                           [1., 0, 1, 0], [0, 0, 1, 0]])  # t=1
    smap = torch.zeros(T * B, 1, 4, 4)
    smap[0, 0, 0, 0] = smap[1, 0, 0, 0] = smap[2, 0, 3, 3] = 1.0  # two at tap (0,0), one at (1,1)
    u = weight_uses.measure(Tiny(spikes, smap), x, T)
    # padded conv: a tap is used at the output positions whose window keeps it on the image
    per_tap = torch.tensor([[4., 6, 4], [6, 9, 6], [4, 6, 4]], dtype=torch.float64)
    assert torch.equal(u["conv.weight"], per_tap.expand(2, 1, 3, 3))
    # linear: the spikes of each input over T steps and B images, per image; an input that
    # never spiked counts as once in the batch (1/B)
    assert torch.equal(u["lin.weight"][0], torch.tensor([3 / 2, 1 / 2, 3 / 2, 1 / 2],
                                                        dtype=torch.float64))
    assert torch.equal(u["lin.weight"][1], u["lin.weight"][0])
    # stride 2, 2x2 kernel: tap (0,0) saw two spikes, tap (1,1) one, the others none
    assert torch.equal(u["down.weight"][0, 0], torch.tensor([[1.0, 0.5], [0.5, 0.5]],
                                                            dtype=torch.float64))


def test_uses_of_a_real_convnet_follow_what_it_runs():
    """Direct encoding: the stem sees the image once (a border tap of the 8x8 padded conv is
    used 7x7 = 49 times, the centre 64); the body's layers run T times on spikes."""
    torch.manual_seed(0)
    spec = ModelSpec(input_shape=(1, 8, 8), timesteps=3)
    model = spec.build()
    with torch.no_grad():
        model.stem[1].bias.fill_(2.0)  # stem neurons fire at every step
    u = weight_uses.measure(model, torch.rand(4, 1, 8, 8), 3)
    stem = u["stem.0.weight"]
    assert float(stem[0, 0, 0, 0]) == 49 and float(stem[0, 0, 1, 1]) == 64
    # conv2 reads the pooled stem spikes (4x4, padded): at most 16 positions x 3 steps
    assert float(u["body.2.weight"].max()) <= 16 * 3


# -- the cost ranking in every method family --------------------------------------------------

@pytest.fixture(scope="module")
def dense_tiny(tmp_path_factory):
    return small_dense(tmp_path_factory.mktemp("devtickets"), epochs=4)


def _mask(art):
    return {k: v.bool() for k, v in tensorfile.load(art.file("mask.safetensors")).items()}


def _pruned(mask) -> int:
    return sum(int((~m).sum()) for m in mask.values())


def test_cost_scope_is_exact_for_every_method_family(dense_tiny):
    store, dense, dcfg, ds = dense_tiny
    total = sum(p.numel() for p in prunable(dense.model).values())
    want = round(0.8 * total)
    imp, _ = search(store, dense, dcfg, ds, SearchConfig(
        method="imp", sparsity=0.8, scope="cost", round_epochs=1, imp=ImpSettings(0.5)))
    eb, _ = search(store, dense, dcfg, ds, SearchConfig(
        method="et-eb", sparsity=0.8, scope="cost", round_epochs=3,
        eb=EarlyBirdSettings(q=3, tau=0.2)))
    rnd, _ = search(store, dense, dcfg, ds, SearchConfig(method="random", sparsity=0.8,
                                                         scope="cost"), trunk=imp)
    rei, _ = search(store, dense, dcfg, ds, SearchConfig(method="reinit", sparsity=0.8,
                                                         scope="cost"), trunk=imp)
    for art in (imp, eb, rnd, rei):
        assert _pruned(_mask(art)) == want, art.metrics["method"]
    # it is the cost ranking: the stem (every weight used at all 64 positions) is pruned far
    # harder than LAMP prunes it, and the classifier (fed sparse spikes) less
    lamp, _ = search(store, dense, dcfg, ds, SearchConfig(
        method="imp", sparsity=0.8, round_epochs=1, imp=ImpSettings(0.5)))
    c, l = imp.metrics["per_layer"], lamp.metrics["per_layer"]
    assert c["stem.0.weight"]["kept"] < l["stem.0.weight"]["kept"]
    assert c["body.10.weight"]["kept"] > l["body.10.weight"]["kept"]
    assert imp.id != lamp.id


def test_new_fields_at_their_defaults_keep_the_ids_of_older_searches():
    assert "granularity" not in SearchConfig().to_dict()
    assert SearchConfig(granularity="channel").to_dict()["granularity"] == "channel"


# -- channel granularity ----------------------------------------------------------------------

def _spec_model(seed=0):
    torch.manual_seed(seed)
    spec = ModelSpec(input_shape=(1, 8, 8))
    model = spec.build()
    with torch.no_grad():  # a trained net's BatchNorm scales differ per channel
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape) * 2)
    return spec, model


def _stats(criterion, model):
    return weight_uses.measure(model, torch.rand(8, 1, 8, 8), 5) \
        if CRITERIA[criterion].uses else None


@pytest.mark.parametrize("criterion", NAMES)
def test_channel_masks_remove_whole_units_nearest_the_target(criterion):
    spec, model = _spec_model()
    state, chain = model.state_dict(), channels.chain(model)
    stats = _stats(criterion, model)
    w = {n: state[n] for n in prunable(model)}
    total = sum(v.numel() for v in w.values())
    biggest = max(v[0].numel() + w[u.consumer][:, :u.group].numel()
                  for u in chain for v in [w[u.weight]])  # weights one unit removes, at most
    for target in (0.2, 0.5, 0.8):
        m = channels.prune(state, target, criterion, chain, stats=stats)
        got = masklib.sparsity(m)
        assert abs(got - target) * total <= biggest / 2 + 1e-9, (target, got)
        want = {n: torch.ones_like(v, dtype=torch.bool) for n, v in w.items()}
        for u in chain:  # a removed unit: its row and the consumer's columns that read it
            gone = (~channels.unit_mask(m[u.weight])).nonzero().flatten().tolist()
            assert len(gone) < w[u.weight].shape[0], "every layer keeps a unit"
            for i in gone:
                want[u.weight][i] = False
                want[u.consumer][:, i * u.group:(i + 1) * u.group] = False
        assert all(torch.equal(m[n], want[n]) for n in w)
        assert bool(m["body.10.weight"].any(1).all())  # classes stay
    # the guard: exactly at the named limit every layer keeps a unit; the next unit is refused
    limit = channels.alive_limit(state, criterion, chain, stats=stats)
    m = channels.prune(state, limit, criterion, chain, stats=stats)
    assert masklib.sparsity(m) == pytest.approx(limit, abs=1e-12)
    assert all(channels.unit_mask(m[u.weight]).any() for u in chain)
    with pytest.raises(UserError, match="no channel; the largest sparsity .* is "
                       f"{limit:.6g}"):
        channels.prune(state, min(limit + 0.02, 0.999), criterion, chain, stats=stats)


def test_a_residual_net_is_refused_channel_granularity_in_one_line():
    model = ModelSpec(input_shape=(1, 8, 8), arch="resnet19", width=0.125).build()
    with pytest.raises(UserError) as e:
        channels.chain(model)
    assert "--granularity channel" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def channel_ticket(dense_tiny):
    store, dense, dcfg, ds = dense_tiny
    art, _ = search(store, dense, dcfg, ds, SearchConfig(
        method="imp", sparsity=0.6, granularity="channel", round_epochs=1, imp=ImpSettings(0.5)))
    ticket, _ = pipeline.retrain(store, dense.path, art.path, RetrainConfig(epochs=1))
    return store, art, ticket


def test_channel_search_reports_its_channels_and_random_keeps_their_count(dense_tiny,
                                                                          channel_ticket):
    store, dense, dcfg, ds = dense_tiny
    _, art, _ = channel_ticket
    m = art.metrics
    assert m["granularity"] == "channel" and abs(m["sparsity"] - 0.6) < 0.05
    mask = _mask(art)
    for name, c in m["channels"].items():
        assert 0 < c["kept"] == int(channels.unit_mask(mask[name]).sum()) <= c["units"]
    assert any(c["kept"] < c["units"] for c in m["channels"].values())
    rnd, _ = search(store, dense, dcfg, ds, SearchConfig(
        method="random", sparsity=0.6, granularity="channel", round_epochs=1,
        imp=ImpSettings(0.5)), trunk=art)
    rm = _mask(rnd)
    assert rnd.metrics["channels"] == m["channels"]
    assert any(not torch.equal(rm[n], mask[n]) for n in mask)


def test_a_channel_ticket_compacts_exactly_into_smaller_layers(dense_tiny, channel_ticket):
    from export.compact import check, compact

    store, dense, dcfg, ds = dense_tiny
    _, art, ticket = channel_ticket
    from edgeprune import checkpoint

    spec, model = checkpoint.load(ticket.path / "model.pt")
    comp, why = compact(model, spec.timesteps, spec.input_shape)
    assert why is None
    proof = check(model, comp, ds.x_test)
    assert proof["spike_mismatches"] == 0 and proof["prediction_agreement"] == 1.0
    assert proof["max_abs_logit_diff"] <= 1e-4 * max(proof["logit_scale"], 1.0)
    kept = {n: c["kept"] for n, c in art.metrics["channels"].items()}
    shapes = {l["name"] + ".weight": l for l in comp.summary()["layers"]}
    for name, k in kept.items():  # every layer runs exactly its kept channels
        assert shapes[name]["shape_after"][0] == k
    assert any(shapes[n]["shape_after"][0] < shapes[n]["shape_before"][0] for n in kept)
    # and the exported ONNX runs the smaller layers on ONNX Runtime with the same logits
    exp, _ = pipeline.export(store, ticket.path / "model.pt")
    layers = exp.metrics["compaction"]["layers"]
    assert sum(np.prod(l["shape_after"]) for l in layers) < \
        sum(np.prod(l["shape_before"]) for l in layers)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exp.path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = ds.x_test[:64]
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x, spec.timesteps).sum(0).numpy()
    assert np.abs(got - want).max() <= 1e-3 * max(np.abs(want).max(), 1.0)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_the_cli_refuses_bad_granularity_and_scope_in_one_line(dense_tiny, tmp_path):
    _, dense, _, _ = dense_tiny
    for flag, value in (("--granularity", "filter"), ("--scope", "work"),
                        ("--cost-exponent", "0")):
        r = run_cli("search", dense.path / "model.pt", flag, value, "--out", tmp_path)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line and value in line, line
    assert not any(tmp_path.glob("search-*"))

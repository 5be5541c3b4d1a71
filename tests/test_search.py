import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from edgeprune import stage_inputs, masks as masklib, tensorfile

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import (DataConfig, EarlyBirdSettings, ImpSettings, ModelConfig,
                              RetrainConfig, SearchConfig, TrainConfig, build)
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec, prunable
from edgeprune.retrain_stage import retrain
from edgeprune.search import earlytime
from edgeprune.search.earlybird import EarlyBird
from edgeprune.search.imp import round_sparsities
from edgeprune.search.search_stage import search
from edgeprune.training import Trainer

from .conftest import run_cli, small_dense


# -- masks -----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
       sparsity=st.floats(0.0, 0.99), scope=st.sampled_from(["global", "layer"]),
       seed=st.integers(0, 1000))
def test_magnitude_prunes_exactly_and_keeps_the_largest(sizes, sparsity, scope, seed):
    g = torch.Generator().manual_seed(seed)
    w = {f"l{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
    total = sum(sizes)
    try:
        m = masklib.prune(w, sparsity, scope)
    except UserError as e:  # refused only when the ranking really empties a layer
        assert "with no weight" in str(e)
        if scope == "global":
            n_keep = total - round(sparsity * total)
            top = torch.cat(list(w.values())).abs().sort(descending=True).values[:n_keep]
            assert any(not (v.abs().unsqueeze(1) == top).any() for v in w.values())
        else:
            frac = round(sparsity * total) / total
            assert any(round(frac * n) >= n for n in sizes)
        return
    pruned = sum(int((~v).sum()) for v in m.values())
    if scope == "global":
        assert pruned == round(sparsity * total)
        kept = torch.cat([w[n][m[n]].abs() for n in w])
        gone = torch.cat([w[n][~m[n]].abs() for n in w])
        if len(kept) and len(gone):
            assert kept.min() >= gone.max()
    else:
        assert abs(pruned - sparsity * total) <= len(sizes)


@settings(max_examples=30, deadline=None)
@given(s1=st.floats(0.0, 0.9), s2=st.floats(0.0, 0.9), seed=st.integers(0, 100))
def test_pruned_weights_stay_pruned(s1, s2, seed):
    lo, hi = sorted((s1, s2))
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(50, generator=g), "b": torch.randn(30, generator=g)}
    first = masklib.prune(w, lo, "global")
    w2 = {n: torch.randn(v.shape, generator=g) for n, v in w.items()}  # weights moved
    try:
        second = masklib.prune(w2, hi, "global", current=first)
    except UserError as e:  # the guard against emptying a layer (tested elsewhere)
        assert "with no weight" in str(e)
        return
    for n in w:
        assert not (second[n] & ~first[n]).any()


def test_masks_hold_zeros_through_sgd_momentum_weight_decay():
    from edgeprune import data

    d = data.load("digits").subset(128, 0)
    torch.manual_seed(0)
    model = ModelSpec(input_shape=d.input_shape).build()
    mask = masklib.prune({n: p.detach() for n, p in prunable(model).items()}, 0.8, "global")
    tr = Trainer(model, d, 2, TrainConfig(epochs=2, batch_size=32, lr=0.5, weight_decay=1e-2),
                 seed=0, masks=mask)
    for _ in range(2):
        tr.train_epoch()
    params = prunable(model)
    for n, m in mask.items():
        assert torch.count_nonzero(params[n][~m]) == 0
        buf = tr.opt.state[params[n]]["momentum_buffer"]
        assert torch.count_nonzero(buf[~m]) == 0  # optimizer state cannot resurrect them
        assert torch.count_nonzero(params[n][m]) > 0.9 * int(m.sum())


def test_round_schedule_lands_on_target():
    s = round_sparsities(0.957, 0.25)
    assert len(s) == 11 and s[-1] == 0.957
    assert s[3] == pytest.approx(1 - 0.75 ** 4) and s[7] == pytest.approx(1 - 0.75 ** 8)
    assert round_sparsities(0.97, 0.25)[-1] == 0.97 and len(round_sparsities(0.97, 0.25)) == 13
    assert round_sparsities(0.1, 0.25) == [0.1]


# -- the method registry ----------------------------------------------------------------------

def test_method_names_and_their_code_come_from_the_registry():
    from edgeprune.search import methods

    assert methods.NAMES == ("imp", "et-imp", "eb", "et-eb", "random", "reinit")
    for name in methods.NAMES:
        m = methods.base(name)
        assert SearchConfig(method=name).base == m.name and callable(m.finder())
        assert m.plotter() is None or callable(m.plotter())
    with pytest.raises(UserError, match="unknown method 'x': choose imp, et-imp, eb"):
        SearchConfig(method="x")


def test_each_method_s_settings_nest_but_options_and_ids_stay_flat():
    cfg = build(SearchConfig, {"prune_rate": 0.5, "eb_q": 3, "et_lambda": 0.4,
                               "et_candidates": (2, 3)})
    assert (cfg.imp.prune_rate, cfg.eb.q, cfg.et.lam, cfg.et.candidates) == (0.5, 3, 0.4, (2, 3))
    # the dict hashed into a search's id: the keys of the flat schema before the nesting
    assert list(cfg.to_dict()) == [
        "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "method", "sparsity",
        "rewind_epoch", "round_epochs", "scope", "keep_first", "keep_last", "prune_rate", "eb_q",
        "eb_tau", "et_epochs", "et_lambda", "et_candidates", "et_batch"]
    assert cfg.to_dict()["et_candidates"] == [2, 3]
    with pytest.raises(UserError, match="eb-q must be at least 2"):
        build(SearchConfig, {"eb_q": 1})


# -- Early-Bird and Early-Time on constructed cases ------------------------------------------

def _mask(bits):
    return {"w": torch.tensor(bits, dtype=torch.bool)}


def test_early_bird_fires_when_window_agrees_and_not_before():
    eb = EarlyBird(q=3, tau=0.2)
    base = [True] * 10
    seq = [[False] * 10, [False] * 5 + [True] * 5, base, base[:9] + [False], base]
    out = [eb.push(_mask(b)) for b in seq]
    # fewer than q masks: no decision; then distances to the previous q-1 masks
    assert out[0] is None and out[1] is None
    assert out[2] == pytest.approx(1.0) and not eb.converged(out[2])
    assert out[3] == pytest.approx(0.6) and not eb.converged(out[3])
    assert out[4] == pytest.approx(0.1) and eb.converged(out[4])


class _Scripted(torch.nn.Module):
    """Outputs whose mean-over-time distribution drifts from the full-T one by a known amount."""

    def __init__(self, gaps):
        super().__init__()
        self.gaps = gaps

    def forward(self, x, T):
        base = torch.tensor([[3.0, 0.0, 0.0]]).repeat(len(x), 1)
        shift = torch.tensor([[0.0, self.gaps.get(T, 0.0), 0.0]])
        return (base + shift).unsqueeze(0).repeat(T, 1, 1)


def test_early_time_picks_smallest_candidate_under_lambda():
    model = _Scripted({2: 6.0, 3: 2.0, 4: 0.5})
    scores = earlytime.kl_scores(model, torch.zeros(4, 1), 5, [2, 3, 4])
    assert scores[2] > scores[3] > scores[4] > 0
    norm = earlytime.normalize(scores)
    assert norm[2] == 1.0
    assert earlytime.pick(norm, 5, 0.6) == 3
    assert earlytime.pick(norm, 5, norm[4] / 2) == 5  # nothing close enough: keep full T
    assert earlytime.pick({2: 0.0, 3: 0.0}, 5, 0.6) == 2
    # identical outputs at every T': float noise of either sign must not decide the pick
    for noise in (1.5e-8, -3e-8):
        assert earlytime.pick(earlytime.normalize({1: noise, 2: noise, 3: noise}), 4, 0.6) == 1


# -- the stages on real data -----------------------------------------------------------------

@pytest.fixture(scope="module")
def dense_small(tmp_path_factory):
    return small_dense(tmp_path_factory.mktemp("search"), epochs=6)


def test_imp_rounds_sparsity_rewind_and_resume(dense_small):
    store, dense, dcfg, ds = dense_small
    cfg = SearchConfig(method="imp", sparsity=0.9, round_epochs=1, keep_first=True)
    art, cached = search(store, dense, dcfg, ds, cfg)
    m = art.metrics
    assert not cached and m["rounds"] == 9 and m["timesteps_search"] == 4
    assert abs(m["sparsity"] - 0.9) <= 0.001
    first = list(prunable(dense.model))[0]
    assert m["per_layer"][first]["sparsity"] == 0.0
    # the ticket restarts exactly from the dense run's weights at the rewind epoch
    rewind = tensorfile.load(art.file("rewind.safetensors"))
    snap = dense.snapshot(m["rewind_epoch"])
    assert all(torch.equal(rewind[k], snap[k]) for k in snap)
    mask = {k: v.bool() for k, v in tensorfile.load(art.file("mask.safetensors")).items()}
    model = dense.spec.build()
    model.load_state_dict(rewind)
    Trainer(model, ds, 4, TrainConfig(epochs=1), 0, masks=mask)
    for n, p in prunable(model).items():
        assert torch.equal(p.detach(), snap[n] * mask[n])
    log = [json.loads(line) for line in art.file("log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in log if r["kind"] == "round"] == list(range(1, 9))
    assert (art.path / "search.png").stat().st_size > 1000
    # interrupted search: remove the search artifact and the last round; only that reruns
    rounds = sorted(store.root.glob("round-*"), key=lambda p: p.stat().st_mtime)
    import shutil
    shutil.rmtree(art.path)
    shutil.rmtree(rounds[-1])
    art2, _ = search(store, dense, dcfg, ds, cfg)
    assert art2.id == art.id
    assert len(list(store.root.glob("round-*"))) == len(rounds)
    mask2 = tensorfile.load(art2.file("mask.safetensors"))
    assert all(torch.equal(mask2[k].bool(), mask[k]) for k in mask)


def test_early_time_eb_and_baselines(dense_small):
    store, dense, dcfg, ds = dense_small
    eb, _ = search(store, dense, dcfg, ds, SearchConfig(method="et-eb", sparsity=0.8,
                                                         round_epochs=6,
                                                         eb=EarlyBirdSettings(q=3, tau=0.2)))
    m = eb.metrics
    et = m["early_time"]
    assert et["candidates"] == [1, 2, 3]
    norm = {int(t): v for t, v in et["normalized_kl"].items()}
    assert m["timesteps_search"] == earlytime.pick(norm, 4, 0.6)
    assert m["eb_epoch"] <= 6 and abs(m["sparsity"] - 0.8) <= 0.001
    ticket = {k: v.bool() for k, v in tensorfile.load(eb.file("mask.safetensors")).items()}

    rnd, _ = search(store, dense, dcfg, ds, SearchConfig(method="random", sparsity=0.8), trunk=eb)
    rmask = {k: v.bool() for k, v in tensorfile.load(rnd.file("mask.safetensors")).items()}
    for n in ticket:
        assert int(rmask[n].sum()) == int(ticket[n].sum())  # same per-layer sparsity
    assert any(not torch.equal(rmask[n], ticket[n]) for n in ticket)

    re, _ = search(store, dense, dcfg, ds, SearchConfig(method="reinit", sparsity=0.8), trunk=eb)
    remask = tensorfile.load(re.file("mask.safetensors"))
    assert all(torch.equal(remask[n].bool(), ticket[n]) for n in ticket)
    r1 = tensorfile.load(re.file("rewind.safetensors"))
    r0 = tensorfile.load(eb.file("rewind.safetensors"))
    assert not torch.equal(r1["stem.0.weight"], r0["stem.0.weight"])

    out, _ = retrain(store, dense, eb, dcfg, ds, RetrainConfig(epochs=2))
    assert abs(out.metrics["sparsity"] - 0.8) <= 0.001
    assert out.metrics["method"] == "et-eb"


def test_compress_cli_end_to_end(tmp_path):
    r = run_cli("compress", "--data", "digits", "--width", "1", "--train-subset", "300",
                "--epochs", "4",
                "--sparsity", "0.9", "--round-epochs", "1", "--retrain-epochs", "2",
                "--latency-budget-ms", "10000", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert abs(out["summary"]["sparsity"] - 0.9) <= 0.001
    assert out["summary"]["timesteps"] == 5 and out["summary"]["timesteps_search"] <= 5
    for key in ("dense", "mask", "ticket"):
        assert (tmp_path / out["artifacts"][key].split(str(tmp_path))[-1].lstrip("/")).exists()
    again = run_cli("compress", out["artifacts"]["dense"], "--sparsity", "0.9", "--round-epochs",
                    "1", "--retrain-epochs", "2", "--latency-budget-ms", "10000", "--out", tmp_path,
                    "--json")
    second = json.loads(again.stdout)
    assert second["ids"] == {k: v for k, v in out["ids"].items() if k != "dense"}
    assert all(second["cached"].values())  # every stage a cache hit


def test_branch_without_a_trunk_searches_the_imp_ticket_first(dense_small):
    store, dense, dcfg, ds = dense_small
    cfg = SearchConfig(method="random", sparsity=0.5, imp=ImpSettings(0.5))
    rnd, _ = search(store, dense, dcfg, ds, cfg)
    trunk = store.find("search", rnd.metrics["trunk"])
    assert trunk is not None and trunk.metrics["method"] == "imp"
    assert rnd.manifest["inputs"] == [dense.id, trunk.id]
    for n, layer in trunk.metrics["per_layer"].items():
        assert rnd.metrics["per_layer"][n]["kept"] == layer["kept"]
    other, _ = pipeline.train(store, DataConfig("digits", 100), ModelConfig(width=0.5, timesteps=4),
                              TrainConfig(epochs=1))
    with pytest.raises(UserError, match="searched on another model"):
        search(store, stage_inputs.open_model(other.path), dcfg, ds, cfg, trunk=trunk)


def test_lamp_scores_are_layer_scale_free_and_never_empty_a_layer():
    g = torch.Generator().manual_seed(0)
    w = {"big": torch.randn(200, generator=g) * 100, "small": torch.randn(800, generator=g) * 1e-3,
         "tiny": torch.randn(10, generator=g) * 1e-6}
    m = masklib.prune(w, 0.95, "lamp")
    assert sum(int((~v).sum()) for v in m.values()) == round(0.95 * 1010)
    assert all(int(v.sum()) >= 1 for v in m.values())
    with pytest.raises(UserError, match="with no weight"):  # global magnitude empties two
        masklib.prune(w, 0.95, "global")
    # rescaling a layer (what BatchNorm after it allows) changes nothing
    m2 = masklib.prune({**w, "small": w["small"] * 1e5}, 0.95, "lamp")
    assert all(torch.equal(m[n], m2[n]) for n in w)
    for n in w:  # within a layer the largest weights are kept
        if m[n].any() and (~m[n]).any():
            assert w[n][m[n]].abs().min() >= w[n][~m[n]].abs().max()
    m3 = masklib.prune(w, 0.98, "lamp", current=m)  # pruned weights stay pruned
    assert all(not (m3[n] & ~m[n]).any() for n in w)


def test_retrain_selects_on_validation_and_rewinds_the_learning_rate(tmp_path):
    from edgeprune import checkpoint
    from edgeprune.data import Dataset
    from edgeprune.training import evaluate

    store = Store(tmp_path)
    dcfg = DataConfig("digits", 400, val_fraction=0.2)
    art, _ = pipeline.train(store, dcfg, ModelConfig(width=0.5, timesteps=3), TrainConfig(epochs=3))
    assert "val_accuracy" in art.metrics
    dense = stage_inputs.open_model(art.path)
    assert dense.data_config == dcfg
    _, ds = stage_inputs.dataset_for(dense, DataConfig())
    assert ds.x_val is not None and len(ds.y_val) == 80
    s_art, _ = search(store, dense, dcfg, ds, SearchConfig(method="imp", sparsity=0.5,
                                                           round_epochs=1, rewind_epoch=1))
    assert "trained.safetensors" in s_art.manifest["files"]
    last, _ = retrain(store, dense, s_art, dcfg, ds, RetrainConfig(epochs=4))
    best, _ = retrain(store, dense, s_art, dcfg, ds, RetrainConfig(epochs=4, select="best-val"))
    assert best.id != last.id
    hist = [json.loads(line) for line in best.file("history.jsonl").read_text().splitlines()]
    top = max(h["val_acc"] for h in hist)
    assert best.metrics["val_accuracy"] == top
    assert hist[best.metrics["selected_epoch"] - 1]["val_acc"] == top
    _, model = checkpoint.load(best.file("model.pt"))
    assert evaluate(model, ds.x_val, ds.y_val, 3)["accuracy"] == top
    resumed, _ = retrain(store, dense, s_art, dcfg, ds, RetrainConfig(epochs=4, lr_resume=True))
    assert len(resumed.file("history.jsonl").read_text().splitlines()) == 3  # epochs 2..4
    trained, _ = retrain(store, dense, s_art, dcfg, ds, RetrainConfig(epochs=4, init="trained"))
    assert len({last.id, best.id, resumed.id, trained.id}) == 4
    no_val = Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)
    with pytest.raises(UserError, match="validation"):
        retrain(store, dense, s_art, dcfg, no_val, RetrainConfig(epochs=4, select="best-val"))

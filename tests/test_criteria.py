"""Pruning criteria (edgeprune/criteria.py) and the guards that judge with them: the limit a
guard names is exactly where the criterion's own mask empties a layer, for every criterion,
and the pre-search guard judges with the criterion the search will use."""
import json
import textwrap
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings, strategies as st

from edgeprune import data, masks as masklib
from edgeprune.data import Dataset
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ImportConfig, RunConfig, SearchConfig
from edgeprune.criteria import CRITERIA, NAMES
from edgeprune.errors import UserError
from edgeprune.stage_inputs import ModelInput
from edgeprune.models import ModelSpec
from edgeprune.search.run import SearchRun, weights
from edgeprune.search.search_stage import check_reachable

from .conftest import run_cli


def test_the_schema_offers_exactly_the_registered_criteria():
    assert NAMES == tuple(CRITERIA) and set(NAMES) >= {"lamp", "global", "layer", "cost"}
    for name in NAMES:
        assert SearchConfig(scope=name).scope == name
    with pytest.raises(UserError, match="unknown scope 'nope': choose " + ", ".join(NAMES)):
        SearchConfig(scope="nope")


@settings(max_examples=60, deadline=None)
@given(criterion=st.sampled_from(NAMES),
       sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       scales=st.lists(st.floats(1e-4, 1e3), min_size=4, max_size=4),
       pruned=st.floats(0.0, 0.6), keep_first=st.booleans(), seed=st.integers(0, 10_000))
def test_the_named_limit_is_exactly_where_the_criterion_empties_a_layer(
        criterion, sizes, scales, pruned, keep_first, seed):
    g = torch.Generator().manual_seed(seed)
    w = {f"l{i}": torch.randn(n, generator=g) * scales[i] for i, n in enumerate(sizes)}
    # some weights already pruned (an IMP round's mask), and maybe a layer kept whole
    current = {n: torch.rand(v.shape, generator=g) >= pruned for n, v in w.items()}
    keep = ("l0",) if keep_first and len(sizes) > 1 else ()
    total = sum(sizes)
    # a data-driven criterion's stats: uses per inference spanning the range a convnet shows
    # (a classifier weight fed by sparse spikes ~0.1, a stem weight at every pixel ~1,000)
    stats = {n: 10 ** (torch.rand(v.shape, generator=g, dtype=torch.float64) * 4 - 1)
             for n, v in w.items()} if CRITERIA[criterion].uses else None
    limit = masklib.alive_limit(w, criterion, current, keep, stats)
    at = round(limit * total)
    kept = masklib.prune(w, at / total, criterion, current, keep, stats)
    assert all(m.any() for m in kept.values())
    if not CRITERIA[criterion].per_layer:  # (per layer, each layer's share is rounded)
        assert sum(int((~m).sum()) for m in kept.values()) == at
    if at + 1 >= total:
        return  # nothing above the limit to try
    with pytest.raises(UserError) as e:
        masklib.prune(w, (at + 1) / total, criterion, current, keep, stats)
    msg = str(e.value)
    assert "with no weight" in msg or "out of reach" in msg, msg
    if "with no weight" in msg:  # and the message names that same limit
        assert float(msg.rsplit(" ", 1)[1]) == pytest.approx(limit, abs=5e-7)


def test_lamp_keeps_every_layer_to_one_weight_each():
    g = torch.Generator().manual_seed(1)
    w = {"a": torch.randn(50, generator=g) * 1e3, "b": torch.randn(300, generator=g) * 1e-3,
         "c": torch.randn(7, generator=g)}
    assert masklib.alive_limit(w, "lamp") == (357 - 3) / 357
    # global magnitude: layer b (tiny weights) keeps one only while all of a and c are kept
    assert masklib.alive_limit(w, "global") == (357 - 50 - 7 - 1) / 357


def test_a_criterion_is_one_registry_entry(monkeypatch):
    """A data-driven criterion gets the per-layer `stats` the caller passes."""
    from edgeprune import criteria

    seen = {}

    def by_activity(weights, alive, stats=None):
        seen.update(stats)
        return {n: w.abs() * stats[n] for n, w in weights.items()}

    monkeypatch.setitem(criteria.CRITERIA, "activity",
                        criteria.Criterion("activity", "test", by_activity))
    w = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([1.0, 1.0])}
    m = masklib.prune(w, 0.4, "activity", stats={"a": torch.tensor([1.0, 1.0, 0.1]),
                                                 "b": torch.tensor([5.0, 0.0])})
    assert set(seen) == {"a", "b"}
    # scores a: 1, 2, 0.3; b: 5, 0 -> the two lowest go (magnitude alone would prune a's 1s)
    assert m["a"].tolist() == [True, True, False] and m["b"].tolist() == [True, False]


def _run(model, cfg: SearchConfig, tmp_path) -> SearchRun:
    spec, net = model
    dense = ModelInput(tmp_path / "model.pt", spec, net, "file-test", None)
    return SearchRun(Store(tmp_path), dense, _digits8(), {}, cfg, RunConfig(), lambda e: None,
                     0, ())


def _digits8() -> Dataset:
    """sklearn's digits (8x8), as the data a search measures the cost ranking's uses on."""
    d = data.load("digits")
    return replace(d, x_train=d.x_train[:300], y_train=d.y_train[:300])


@pytest.mark.parametrize("criterion", NAMES)
def test_the_pre_search_guard_refuses_exactly_above_the_search_criterions_limit(criterion,
                                                                                 tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(input_shape=(1, 8, 8))
    model = (spec, spec.build())
    w = weights(model[1])
    total = sum(v.numel() for v in w.values())
    run = _run(model, SearchConfig(scope=criterion), tmp_path)
    # the stats the search measures itself (on the training images), for the same weights
    stats = run.work(model[1].state_dict()) if CRITERIA[criterion].uses else None
    n = round(masklib.alive_limit(w, criterion, stats=stats) * total)
    try:  # at the limit no layer is empty (a cut path is another guard's refusal)
        check_reachable(_run(model, SearchConfig(scope=criterion, sparsity=n / total), tmp_path))
    except UserError as e:
        assert "no input reaches the output" in str(e), e
    with pytest.raises(UserError, match="with no weight"):
        check_reachable(_run(model, SearchConfig(scope=criterion, sparsity=(n + 1) / total),
                             tmp_path))


@pytest.mark.parametrize("criterion", NAMES)
def test_the_channel_guard_refuses_exactly_past_the_last_unit_of_a_layer(criterion, tmp_path):
    """--granularity channel: the guard names the sparsity of the longest prefix of the units'
    pruning order that keeps a unit in every layer; a search there passes it, the next unit
    is refused (judged with the search's own ranking and measured uses)."""
    from edgeprune import channels

    torch.manual_seed(0)
    spec = ModelSpec(input_shape=(1, 8, 8))
    model = (spec, spec.build())
    cfg = SearchConfig(scope=criterion, granularity="channel")
    run = _run(model, cfg, tmp_path)
    state = model[1].state_dict()
    stats = run.work(state) if CRITERIA[criterion].uses else None
    order = channels._Order(state, run.chain, criterion, None, (), stats)
    limit = order.limit()
    try:
        check_reachable(_run(model, replace(cfg, sparsity=limit), tmp_path))
    except UserError as e:
        assert "no input reaches the output" in str(e), e
    past = (order.removed[order.last] + order.removed[order.last + 1]) / 2 + 1
    with pytest.raises(UserError, match=f"no channel; .* is {limit:.6g}"):
        check_reachable(_run(model, replace(cfg, sparsity=past / order.total), tmp_path))


NORSE_NET = textwrap.dedent("""
    import torch
    from torch import nn
    import norse.torch as norse
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.leaky_integrator import LIParameters

    def net():
        # issue 22's model: Norse LIFCell, two convs and one linear, 3,784 weights
        torch.manual_seed(0)
        p = LIFParameters(tau_mem_inv=torch.as_tensor(500.0))
        return norse.SequentialState(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), norse.LIFCell(p), nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), norse.LIFCell(p), nn.Flatten(),
            nn.Linear(16 * 4 * 4, 10),
            norse.LICell(LIParameters(tau_mem_inv=torch.as_tensor(500.0))))
""")


def test_a_norse_lifcell_net_at_90_percent_is_searched_with_lamp_as_the_guard_allows(tmp_path):
    """Issue 22: `--sparsity 0.9 --method imp` on this net was refused by a guard that ranked
    by global magnitude while the search ranks by LAMP (the default)."""
    (tmp_path / "net.py").write_text(NORSE_NET)
    ns: dict = {}
    exec(compile(NORSE_NET, "net.py", "exec"), ns)
    torch.save(ns["net"]().state_dict(), tmp_path / "w.pt")
    import pipeline

    store = Store(tmp_path / "runs")
    art, _ = pipeline.import_model(store, f"{tmp_path / 'net.py'}:net", tmp_path / "w.pt",
                                   ImportConfig(timesteps=2), DataConfig("digits"), False)
    model = art.path / "model.pt"
    common = ["search", model, "--sparsity", "0.9", "--method", "imp", "--out", tmp_path / "runs",
              "--train-subset", "200", "--round-epochs", "1", "--prune-rate", "0.5"]
    refused = run_cli(*common, "--scope", "global")  # global magnitude does empty a layer
    assert refused.returncode == 2 and "with no weight" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    found = run_cli(*common, "--json")  # the default criterion (LAMP) allows it
    assert found.returncode == 0, found.stderr
    m = json.loads(found.stdout)["metrics"]
    assert abs(m["sparsity"] - 0.9) < 1e-3
    assert all(layer["kept"] > 0 for layer in m["per_layer"].values())

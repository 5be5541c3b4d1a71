"""The cost model (export/cost.py) on tiny nets whose synaptic operations are counted by hand:
a padded 3x3 conv on a 4x4 image (border outputs see fewer inputs), pooling between it and a
linear layer on spikes, the image (MACs) against input spikes (ACs), and pruned weights that
effective SynOps leave out."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edgeprune.artifacts import Store
from edgeprune.models import SNN, Normalize, SpikingSequential
from edgeprune.neurons import Threshold
from edgeprune.pooling import AvgPool2d
from export import cost
from targets import modelcard, report

from .conftest import run_cli

# a 3x3 kernel, padding 1, on 4x4: 4 corners see 4 inputs, 8 edges 6, 4 inner 9
PADDED_CONV = 4 * 4 + 8 * 6 + 4 * 9  # 100, not 16 * 9
IMAGE = torch.full((1, 1, 4, 4), 0.5)  # analog: the first layer multiplies


def tiny(pool: nn.Module, encoding: str = "direct", threshold: float = 10.0) -> SNN:
    """normalize (x / 0.25) -> conv 1->1 3x3 (ones) -> spikes where the sum > threshold ->
    2x2 pool -> linear 4->2 (ones). On an image of 0.5 the conv sums 8/12/18 (corner/edge/
    inner): 12 of 16 neurons spike, every 2x2 window holds one silent corner."""
    stem = nn.Conv2d(1, 1, 3, 1, 1, bias=False)
    fc = nn.Linear(4, 2, bias=False)
    for w in (stem.weight, fc.weight):
        nn.init.ones_(w)
    body = SpikingSequential(Threshold(threshold), pool, nn.Flatten(), fc)
    return SNN(Normalize([0.0], [0.25]), stem, body, encoding).eval()


def layer(counted: dict, name: str) -> dict:
    return next(l for l in counted["layers"] if l["name"] == name)


def test_direct_encoding_the_image_costs_macs_once_and_spikes_cost_acs_per_step():
    T = 3
    c = cost.count(tiny(nn.MaxPool2d(2)), IMAGE.expand(2, -1, -1, -1), T)  # per inference
    stem, fc = layer(c, "stem"), layer(c, "body.3")
    # the static image is seen once; padding contributes nothing
    assert (stem["op"], stem["synops"], stem["macs"], stem["acs"]) == ("MAC", 100, 100, 0)
    assert stem["effective_macs"] == PADDED_CONV and stem["input_sparsity"] == 0
    # max pooling keeps spikes binary: 4 ones into 4x2 weights, every step
    assert (fc["op"], fc["synops"], fc["acs"], fc["effective_acs"]) == ("AC", 8 * T, 8 * T, 8 * T)
    t = c["total"]
    assert (t["synops"], t["macs"], t["acs"]) == (100 + 24, 100, 24)
    assert t["activation_sparsity"] == pytest.approx(4 / 16)
    assert t["connection_sparsity"] == 0
    assert t["energy_pj"] == pytest.approx(100 * 4.6 + 24 * 0.9)
    assert c["energy"]["source"].startswith("Horowitz, ISSCC 2014, 45 nm")
    assert [l["name"] for l in c["layers"]] == ["stem", "body.3"]  # pooling: no synaptic ops


def test_average_pooling_makes_the_next_layer_multiply():
    c = cost.count(tiny(AvgPool2d(2)), IMAGE, 2)
    fc = layer(c, "body.3")  # inputs 0.75: analog
    assert (fc["op"], fc["macs"], fc["acs"], fc["effective_macs"]) == ("MAC", 16, 0, 16)


def test_input_spikes_cost_acs_and_silent_steps_cost_no_effective_ops():
    spikes = torch.zeros(2, 1, 1, 4, 4)
    spikes[0] = 1.0  # all inputs spike at step 0, none at step 1
    # ones into the conv sum 4/6/9: the same 12 of 16 spike above 5
    c = cost.count(tiny(nn.MaxPool2d(2), "poisson", threshold=5.0), spikes, 2)
    stem, fc = layer(c, "stem"), layer(c, "body.3")
    assert (stem["op"], stem["synops"], stem["acs"], stem["macs"]) == ("AC", 200, 200, 0)
    assert stem["effective_acs"] == PADDED_CONV and stem["input_sparsity"] == 0.5
    assert (fc["synops"], fc["effective_acs"]) == (16, 8)  # step 1: no spike reaches it
    assert c["total"]["activation_sparsity"] == pytest.approx((4 + 16) / 32)


def test_pruned_weights_are_not_effective_synops():
    model = tiny(nn.MaxPool2d(2))
    with torch.no_grad():
        model.stem.weight[0, 0, 1, 1] = 0  # the centre tap: one connection per output
        model.body[3].weight[1, 2] = 0
    c = cost.count(model, IMAGE, 1)
    stem, fc = layer(c, "stem"), layer(c, "body.3")
    assert (stem["synops"], stem["effective_macs"]) == (100, 100 - 16)
    # sums now 6/10/16: only the 4 inner neurons spike, one per pooling window
    assert (fc["synops"], fc["effective_acs"]) == (8, 7)
    assert stem["connection_sparsity"] == pytest.approx(1 / 9)
    assert c["total"]["connection_sparsity"] == pytest.approx(2 / 17)
    assert c["total"]["activation_sparsity"] == pytest.approx(12 / 16)
    assert c["total"]["energy_pj"] == pytest.approx(84 * 4.6 + 7 * 0.9)


def test_the_energy_constants_are_configurable():
    c = cost.count(tiny(nn.MaxPool2d(2)), IMAGE, 1, pj_per_ac=1.0,
                   pj_per_mac=10.0)
    assert c["total"]["energy_pj"] == pytest.approx(100 * 10.0 + 8 * 1.0)
    assert c["energy"] == {"pj_per_ac": 1.0, "pj_per_mac": 10.0, "source": "given"}


def test_the_report_and_the_model_card_carry_the_totals_and_the_ratio():
    """What validation reads from two exports' metrics (as the cost pass records them)."""
    dense = tiny(nn.MaxPool2d(2))
    ticket = tiny(nn.MaxPool2d(2))
    with torch.no_grad():
        ticket.stem.weight[0, 0, 1, 1] = 0
    metrics = [SimpleNamespace(metrics={"cost": {k: v for k, v in cost.count(m, IMAGE, 1).items()
                                                 if k in ("total", "energy")}})
               for m in (ticket, dense)]
    c = report.cost(*metrics)
    assert c["ratio_vs_dense"]["effective_synops"] == pytest.approx((84 + 8) / (100 + 8))
    assert c["ratio_vs_dense"]["synops"] == 1  # pruning removes no connection's existence
    assert report.cost(metrics[0], None)["dense"] is None
    assert report.cost(None, metrics[1]) is None  # a loose file: nothing counted
    md = "\n".join(report.cost_markdown(c))
    assert "| this model | 108 | 8 | 100 | 92 | 8 | 84 |" in md and "1/1.2" in md
    card = modelcard.render("tiny", [], {}, [{"id": "v", "report": {"targets": [], "cost": c}}],
                            [])
    assert "## Cost model" in card and "| dense | 108 | 8 | 100 | 108 | 8 | 100 |" in card
    assert '"effective_synops_vs_dense": 0.85' in card


def test_compress_reports_the_cost_of_ticket_and_dense_and_their_ratio(tmp_path, digits_model):
    """A real `compress --json` from the trained dense model: the ratio in the summary is the
    ticket's effective SynOps over the dense model's, both as their exports counted them; the
    text summary shows the cost table within 80 columns."""
    shutil.copytree(digits_model.path, tmp_path / digits_model.path.name)  # the lineage
    args = ("compress", tmp_path / digits_model.path.name / "model.pt", "--method", "imp",
            "--sparsity", "0.9", "--prune-rate", "0.7", "--round-epochs", "1",
            "--retrain-epochs", "1", "--target", "x86_64", "--max-accuracy-drop", "100",
            "--latency-budget-ms", "10000",  # the figures are under test, not a busy host's p95
            "--no-nir", "--out", tmp_path)
    r = run_cli(*args, "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    c = out["summary"]["cost"]
    store = Store(tmp_path)
    counted = {}
    for who, aid in (("ticket", out["ids"]["export"]),
                     ("dense", out["summary"]["validation"]["dense"])):
        counted[who] = json.loads(store.find("export", aid).file("cost.json").read_text())
    assert c["model"] == counted["ticket"]["total"] and c["dense"] == counted["dense"]["total"]
    ratio = c["ratio_vs_dense"]["effective_synops"]
    assert ratio == pytest.approx(c["model"]["effective_synops"] / c["dense"]["effective_synops"])
    assert 0 < ratio < 0.5  # 90% of the weights are gone
    assert c["model"]["connection_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert c["dense"]["connection_sparsity"] < 0.01
    folder = Path(out["artifacts"]["validation"])
    assert json.loads((folder / "report.json").read_text())["cost"] == c
    md = (folder / "report.md").read_text()
    assert "## Cost model" in md and "Horowitz, ISSCC 2014" in md
    text = run_cli(*args, env_extra={"COLUMNS": "80"})  # cached: the same artifacts
    assert text.returncode == 0, text.stderr[-3000:]
    assert "cost per inference" in text.stdout and f"1/{1 / ratio:.1f}" in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 80

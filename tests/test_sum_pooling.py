"""Sum pooling (Sinabs' SumPool2d, read from a NIR SumPool2d without a Scale after it) is its
own layer, exact in ONNX (unrolled and step), the C runtime and NIR, through compaction; and an
export whose own parity check fails exits 1 with one line and stores nothing."""
import os
import shutil
import subprocess
import sys

import nir
import numpy as np
import onnx
import pytest
import torch

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ExportConfig, ImportConfig
from edgeprune.errors import GateFailed
from edgeprune.pooling import SumPool2d
from edgeprune.stage_inputs import open_model
from export import passes
from export.nir_sim import simulate

from .conftest import ROOT, requires_cc, run_cli, skip_unless

T = 4


def _sum_pool_nir(path):
    """Conv 1->4 (3x3, padding 1), LIF, SumPool2d 2x2, Flatten, Affine 64->10, LIF. Conv
    channel 3 has no weights: its neurons never spike, so compaction removes the channel."""
    rng = np.random.default_rng(0)
    w = rng.normal(0.6, 0.5, size=(4, 1, 3, 3)).astype(np.float32)
    w[3] = 0
    lif = lambda shape, th: nir.LIF(tau=np.full(shape, 2e-3), r=np.ones(shape),  # noqa: E731
                                    v_leak=np.zeros(shape), v_threshold=np.full(shape, th),
                                    v_reset=np.zeros(shape))
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([1, 8, 8])}),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=w, stride=1, padding=1, dilation=1,
                           groups=1, bias=np.zeros(4, np.float32)),
        "lif1": lif((4, 8, 8), 0.5),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0),
        "fc": nir.Affine(weight=rng.normal(0.02, 0.1, size=(10, 64)).astype(np.float32),
                         bias=np.full(10, 0.1, np.float32)),
        "lif2": lif(10, 1.0),
        "output": nir.Output(output_type={"output": np.array([10])})},
        edges=[("input", "conv"), ("conv", "lif1"), ("lif1", "pool"), ("pool", "flat"),
               ("flat", "fc"), ("fc", "lif2"), ("lif2", "output")])
    nir.write(str(path), g)
    return path


def test_sum_pool_is_exact_in_onnx_c_and_nir_through_compaction(tmp_path):
    store = Store(tmp_path / "runs")
    art, _ = pipeline.import_model(store, None, _sum_pool_nir(tmp_path / "sum.nir"),
                                   ImportConfig(timesteps=T, dt=1e-3), DataConfig("none"))
    model = open_model(art.path / "model.pt").model.eval()
    pools = [m for m in model.modules() if isinstance(m, SumPool2d)]
    assert len(pools) == 1
    exp, _ = pipeline.export(store, art.path / "model.pt", ExportConfig(probe=64, nir=True))
    e = exp.metrics
    assert e["compaction"]["applied"]
    # the C program's compaction drops the dead channel (ONNX keeps channels in blocks of 16)
    assert any(l["shape_before"] != l["shape_after"] for l in e["compaction"]["c"]["layers"])
    assert all(p.get("passed") is not False for p in e["passes"])
    for name in ("model.onnx", "model.step.onnx"):
        p = e["parity"][name]
        # a sum of spikes: every window's count, bit for bit (an average would be a quarter)
        assert p["prediction_agreement"] == 1.0 and p["spike_mismatches"] == 0, (name, p)
        assert p["max_abs_diff"] == 0.0, (name, p)
    assert e["nir"] == "written" and e["parity"]["model.nir"]["spike_mismatches"] == 0

    # the shipped NIR holds a SumPool2d with no Scale after it, and reads back as a sum pool
    graph = nir.read(str(exp.path / "model.nir"))
    sums = [n for n, node in graph.nodes.items() if isinstance(node, nir.SumPool2d)]
    assert len(sums) == 1
    after = [d for s, d in graph.edges if s == sums[0]]
    assert not any(isinstance(graph.nodes[d], nir.Scale) for d in after)
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x, T).sum(0).numpy()
    assert ref.max() > 0  # the readout spikes: the comparison proves something
    got = simulate(graph, x.numpy(), T)["logits"]
    assert np.array_equal(got, ref)
    back, _ = pipeline.import_model(store, None, exp.path / "model.nir",
                                    ImportConfig(timesteps=T), DataConfig("none"))
    again = open_model(back.path / "model.pt").model.eval()
    assert any(isinstance(m, SumPool2d) for m in again.modules())
    with torch.no_grad():
        assert torch.equal(again(x, T).sum(0), torch.from_numpy(ref))

    # the ONNX graph sums: no AveragePool node (the one torch.onnx would write without divisor)
    ops = {n.op_type for n in onnx.load(str(exp.path / "model.onnx")).graph.node}
    assert "AveragePool" not in ops

    skip_unless(requires_cc)
    from targets import c_build, c_run

    src = tmp_path / "c"
    shutil.copytree(exp.path, src)
    out = c_run.run(c_build.build(src), x.numpy()).logits
    assert np.array_equal(out, ref)


# torch.onnx's reading of AvgPool2d(divisor_override=1), the layer sum pooling used to be: the
# exported graph averages while PyTorch sums
OLD_EXPORT = """
import runpy, sys, torch
import torch.nn.functional as F
from edgeprune import pooling
def forward(self, x):
    div = None if torch.onnx.is_in_onnx_export() else 1
    return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, divisor_override=div)
pooling.SumPool2d.forward = forward
sys.argv = ["edgeprune", *sys.argv[1:]]
runpy.run_module("cli", run_name="__main__")
"""


def test_export_failing_its_parity_check_exits_1_and_stores_nothing(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli("import-model", _sum_pool_nir(tmp_path / "sum.nir"), "--dt", "1e-3",
                  "--data", "none", "-T", str(T), "--out", runs, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    model = next(runs.glob("import-*/model.pt"))
    r = subprocess.run([sys.executable, "-c", OLD_EXPORT, "export", str(model), "--probe", "64",
                        "--out", str(runs)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "model.onnx" in lines[0] and "same class" in lines[0]
    assert not list(runs.glob("export-*")), "a failed export was stored"
    # the next run makes the export afresh (nothing cached as good), and it is exact
    r = run_cli("export", model, "--probe", "64", "--out", runs)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list(runs.glob("export-*"))) == 1


def test_nir_that_fails_its_check_is_dropped_when_optional_and_fails_when_required(
        tmp_path, monkeypatch):
    """model.nir read back computing otherwise (here: one extra spike per layer and sample in
    its simulation): without --nir the file goes and metrics say why; with --nir the export
    fails and stores nothing."""
    store = Store(tmp_path / "runs")
    art, _ = pipeline.import_model(store, None, _sum_pool_nir(tmp_path / "sum.nir"),
                                   ImportConfig(timesteps=T, dt=1e-3), DataConfig("none"))
    real = passes.simulate

    def off_by_one(*args, **kwargs):
        got = real(*args, **kwargs)
        return {k: v + 1 if k.startswith("spikes.") else v for k, v in got.items()}

    monkeypatch.setattr(passes, "simulate", off_by_one)
    cfg = dict(probe=32, c_runtime=False, int8=False)
    exp, _ = pipeline.export(store, art.path / "model.pt", ExportConfig(**cfg))
    assert exp.metrics["nir"].startswith("skipped: its parity check failed")
    assert not (exp.path / "model.nir").exists() and "model.nir" not in exp.metrics["parity"]
    before = set((tmp_path / "runs").glob("export-*"))
    with pytest.raises(GateFailed, match=r"^model\.nir does not reproduce .* same class"):
        pipeline.export(store, art.path / "model.pt", ExportConfig(**cfg, nir=True))
    assert set((tmp_path / "runs").glob("export-*")) == before

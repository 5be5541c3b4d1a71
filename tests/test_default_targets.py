"""compress's default targets: ONNX Runtime and, wherever a C compiler is found, the C runtime,
with the summary's speed-up against the dense model on ONNX Runtime; where no compiler is
found, ONNX Runtime alone and one line saying why. A named --target is always obeyed."""
import json
import os
import re
from pathlib import Path

import pytest

from targets import tools

from .conftest import requires_cc, run_cli

# the quickest compress there is: a tiny ticket of a barely trained net (mechanics, not accuracy)
QUICK = ("compress", "--data", "digits", "--width", "1", "--train-subset", "200", "--epochs", "2",
         "--method", "imp", "--sparsity", "0.5", "--prune-rate", "0.5", "--retrain-epochs", "1",
         "--latency-budget-ms", "10000", "--max-accuracy-drop", "100", "--no-int8", "--no-nir",
         "--probe", "64",
         "--limit", "64")
ENV = {"OMP_NUM_THREADS": "1"}


def _path_without_compilers(tmp_path: Path) -> str:
    """This PATH's commands, first found wins, minus every C compiler the runtime looks for."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name not in tools.CC.names and not (shadow / name).exists():
                os.symlink(os.path.join(d, name), shadow / name)
    return str(shadow)


def _json(r):
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("default-targets")


@requires_cc
def test_compress_with_a_compiler_validates_on_onnxruntime_and_the_c_runtime(run_dir):
    out = _json(run_cli(*QUICK, "--out", run_dir, "--json", env_extra=ENV))
    s = out["summary"]
    assert s["validation"]["targets"] == ["x86_64", "c-x86_64"]
    assert s["notes"] == []
    report = json.loads((Path(out["artifacts"]["validation"]) / "report.json").read_text())
    entries = {e["target"]: e for e in report["targets"]}
    dense_ort = entries["x86_64"]["dense"]["latency_p50_ms"]
    vs = s["vs_dense_onnxruntime"]
    assert vs["dense_target"] == "x86_64" and vs["dense_p50_ms"] == dense_ort
    rows = {(r["model"], r["target"]): r for r in vs["rows"]}
    assert set(rows) == {("ticket", "x86_64"), ("ticket", "c-x86_64"), ("dense", "c-x86_64")}
    c = rows["ticket", "c-x86_64"]
    # the C ticket against the dense ONNX model, both timed in this one validation run
    assert c["runtime"] == "c" and c["p50_ms"] == entries["c-x86_64"]["latency"]["p50_ms"]
    assert c["speedup"] == pytest.approx(dense_ort / c["p50_ms"])
    assert rows["ticket", "x86_64"]["speedup"] == pytest.approx(
        entries["x86_64"]["speedup_vs_dense"])
    assert c["size_ratio"] == pytest.approx(entries["c-x86_64"]["file_bytes"]
                                            / entries["x86_64"]["dense"]["file_bytes"])

    # the same run for people (every artifact found): the headline table in 80 columns
    r = run_cli(*QUICK, "--out", run_dir, env_extra={**ENV, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert "…" not in r.stdout and max(map(len, lines)) <= 80, r.stdout
    assert "speed-up vs dense ONNX Runtime (x86_64" in r.stdout
    row = next(l for l in lines if "ticket" in l and "C runtime (c-x86_64)" in l)
    assert f"{c['speedup']:.2f}x" in row and f"{c['p50_ms']:.3g}" in row, row
    ratio = s["cost"]["ratio_vs_dense"]["effective_synops"]
    assert re.search(rf"effective SynOps: 1/{1 / ratio:.1f} of dense", r.stdout), r.stdout
    assert "edgeprune:" not in r.stderr  # no note: nothing was left out


def test_compress_without_a_compiler_validates_on_onnxruntime_alone_and_says_why(run_dir,
                                                                                 tmp_path):
    r = run_cli(*QUICK, "--out", run_dir, "--json",
                env_extra={**ENV, "PATH": _path_without_compilers(tmp_path)})
    s = _json(r)["summary"]
    assert s["validation"]["targets"] == ["x86_64"]
    notes = [l for l in r.stderr.splitlines() if l.startswith("edgeprune:")]
    assert len(notes) == 1 and s["notes"] == [notes[0][len("edgeprune: "):]], r.stderr
    assert "ONNX Runtime only" in notes[0] and "apt-get install gcc" in notes[0]
    assert "edgeprune doctor" in notes[0]
    assert [row["target"] for row in s["vs_dense_onnxruntime"]["rows"]] == ["x86_64"]


@requires_cc
def test_a_named_target_is_obeyed(run_dir):
    """--target x86_64 on a host with a compiler: no C target and no note. (A named C target
    without a compiler exits 2 naming the package: tests/test_deploy.py.)"""
    r = run_cli(*QUICK, "--out", run_dir, "--json", "--target", "x86_64", env_extra=ENV)
    assert _json(r)["summary"]["validation"]["targets"] == ["x86_64"]
    assert "edgeprune:" not in r.stderr


@requires_cc
def test_a_default_c_target_the_export_cannot_feed_is_left_out_saying_why(tmp_path):
    """Poisson input is not in the C runtime: the export writes no C sources, and the default
    C target is dropped with one line instead of failing the run (a named one exits 2)."""
    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import (DataConfig, ExportConfig, ImpSettings, ModelConfig,
                                  RetrainConfig, SearchConfig, TrainConfig, ValidateConfig)

    seen = []
    plan = pipeline.Plan(data=DataConfig("digits", train_subset=200),
                         model=ModelConfig(width=0.5, encoding="poisson"),
                         train=TrainConfig(epochs=1),
                         search=SearchConfig(method="imp", sparsity=0.5, imp=ImpSettings(0.5),
                                             round_epochs=1),
                         retrain=RetrainConfig(epochs=1),
                         export=ExportConfig(int8=False, nir=False, probe=32),
                         validate=ValidateConfig(latency_budget_ms=10000.0, limit=32,
                                                 dense=False))
    result = pipeline.compress(Store(tmp_path), plan, report=seen.append)
    assert result.artifacts["export"].metrics["c_runtime"].startswith("skipped")
    assert result.artifacts["validate"].metrics["targets"] == ["x86_64"]
    assert len(result.notes) == 1 and "ONNX Runtime only" in result.notes[0]
    assert [e["text"] for e in seen if e.get("event") == "note"] == result.notes

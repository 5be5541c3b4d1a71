"""The ticket on the device, end to end through the CLI: compress to the C runtime targets (native
and aarch64 under QEMU) next to ONNX Runtime, the dense model measured in the same run, the
gates against it, the bundle with C runners that `verify` re-runs, int8 behind the gates, and
clean refusals (missing compiler, wrong-sized runner input)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import requires_cc, requires_cross_cc, run_cli

pytestmark = [requires_cc, requires_cross_cc]
TARGETS = "x86_64,c-x86_64,c-arm64-cortex-a72"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_model):
    d = tmp_path_factory.mktemp("deploy-runs")
    shutil.copytree(digits_model.path, d / digits_model.path.name)  # the lineage needs it here
    return d


@pytest.fixture(scope="module")
def compressed(run_dir, digits_model):
    """`compress` to a 90% imp ticket, validated on ONNX Runtime and both C targets, packaged."""
    dense = run_dir / digits_model.path.name / "model.pt"
    r = run_cli("compress", dense, "--method", "imp", "--sparsity", "0.9", "--prune-rate", "0.7",
                "--round-epochs", "2", "--retrain-epochs", "3", "--target", TARGETS,
                "--latency-budget-ms", "1000", "--max-accuracy-drop", "30", "--no-nir",
                "--package", "--out", run_dir, "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _report(out: dict) -> dict:
    return json.loads((Path(out["artifacts"]["validation"]) / "report.json").read_text())


def test_compress_measures_dense_and_ticket_side_by_side(compressed):
    s = compressed["summary"]
    rows = {r["target"]: r for r in s["dense_vs_ticket"]}
    assert set(rows) == set(TARGETS.split(","))
    report = _report(compressed)
    for e in report["targets"]:
        r = rows[e["target"]]
        assert e["dense"]["artifact"] and r["dense_accuracy"] == e["dense_accuracy"] > 0.9
        assert r["speedup_vs_dense"] == pytest.approx(
            e["dense"]["latency_p50_ms"] / e["latency"]["p50_ms"])
        assert e["parity"]["agreement"] == 1.0  # same class as PyTorch on every input
        assert e["parity"]["max_abs_diff"] <= e["profile"]["parity"]["max_abs_logit_diff"]
    # the C runtime of a 90% ticket is far smaller than the dense model's
    assert rows["c-x86_64"]["size_ratio_vs_dense"] < 0.35
    assert rows["c-x86_64"]["runtime"] == "c" and not rows["c-x86_64"]["emulated"]
    assert rows["c-arm64-cortex-a72"]["emulated"]
    c = {e["target"]: e for e in report["targets"]}["c-arm64-cortex-a72"]
    assert [g["status"] for g in c["gates"] if g["gate"] in ("latency", "speedup")] == \
        ["skipped", "skipped"]  # emulated latency is not indicative: no gate on it
    md = (Path(compressed["artifacts"]["validation"]) / "report.md").read_text()
    assert "## What the compression bought" in md and "| c-x86_64 | c |" in md
    # the native C target's time per layer (profiling build); none under emulation
    prof = {e["target"]: e for e in report["targets"]}["c-x86_64"]["c"]["layer_profile"]
    assert [l["name"] for l in prof["layers"]][-1] == "other" and prof["total_ms"] > 0
    assert {"stem.0", "body.2", "body.7"} <= {l["name"] for l in prof["layers"]}
    assert c["c"]["layer_profile"] is None
    assert "### c-x86_64: time per layer" in md and "| body.2 | conv2d |" in md


def test_bundle_has_c_runners_and_verify_reruns_them(compressed, tmp_path):
    import tarfile

    bundle = Path(compressed["artifacts"]["bundle"])
    with tarfile.open(bundle) as tar:
        names = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile()}
    for f in ("c/model.h", "c/model.c", "c/model_weights.c", "c/runner.c",
              "c/c-x86_64/runner", "c/c-x86_64/libmodel.a", "c/c-arm64-cortex-a72/runner",
              "c/c-arm64-cortex-a72/libmodel.a", "model.onnx", "MODEL_CARD.md"):
        assert f in names, f
    assert names["c/c-x86_64/runner"].mode == 0o755
    card = tarfile.open(bundle).extractfile(names["MODEL_CARD.md"]).read().decode()
    assert "## What the compression bought" in card and "| c-arm64-cortex-a72 | c |" in card
    r = run_cli("verify", bundle, "--rebuild-c", "--json")  # unsigned: no bundled code runs
    assert r.returncode == 0, r.stderr[-2000:]
    runs = {(x["target"], x["file"]): x for x in json.loads(r.stdout)["runs"]}
    for t in ("c-x86_64", "c-arm64-cortex-a72"):
        x = runs[(t, "c/model.c (rebuilt here)")]
        assert x["passed"] and x["agreement"] == 1.0 and x["max_abs_diff"] < 1e-3
    assert runs[("c-arm64-cortex-a72", "c/model.c (rebuilt here)")]["mode"] == "emulated"
    assert ("x86_64", "model.onnx") in runs


def test_runner_refuses_a_wrong_sized_input(compressed, tmp_path):
    import tarfile

    with tarfile.open(compressed["artifacts"]["bundle"]) as tar:
        tar.extractall(tmp_path, filter="data")
    runner = next(tmp_path.glob("*/c/c-x86_64/runner"))
    runner.chmod(0o755)
    p = subprocess.run([str(runner)], input=b"\0" * 5, capture_output=True, timeout=60)
    assert p.returncode == 2 and b"not a whole number" in p.stderr
    good = np.zeros((2, 1, 8, 8), "<f4").tobytes()
    p = subprocess.run([str(runner)], input=good, capture_output=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout) == 2 * 10 * 4


def test_min_speedup_and_accuracy_drop_gates_exit_1(compressed):
    onnx = Path(compressed["artifacts"]["onnx"])
    ticket = Path(compressed["artifacts"]["ticket"])
    out = onnx.parent.parent
    r = run_cli("validate", onnx, "--against", ticket, "--target", "c-x86_64", "--out", out,
                "--latency-budget-ms", "1000", "--max-accuracy-drop", "30", "--min-speedup",
                "1000")
    assert r.returncode == 1, r.stderr
    assert "speedup gate failed" in r.stderr and "min 1000x" in r.stderr
    r = run_cli("validate", onnx, "--against", ticket, "--target", "x86_64", "--out", out,
                "--latency-budget-ms", "1000", "--max-accuracy-drop", "0", "--json")
    drop = json.loads(r.stdout)["report"]["targets"][0]["accuracy_drop_vs_dense"]
    if drop > 0:  # the ticket lost accuracy: a zero-point limit fails, naming both accuracies
        assert r.returncode == 1 and "accuracy vs dense gate failed" in r.stderr
        assert "ticket " in r.stderr and "vs dense " in r.stderr
    else:
        assert r.returncode == 0


def test_destroyed_ticket_fails_the_default_dense_gate(run_dir, digits_model):
    """A 'ticket' with every weight zero (chance accuracy) exits 1 under the default 5-point
    limit, naming both accuracies; the dense model is found through the lineage."""
    import torch

    from edgeprune import checkpoint

    import pipeline
    from edgeprune.artifacts import Store

    store = Store(run_dir)
    spec, model = checkpoint.load(digits_model.file("model.pt"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                p.zero_()

    def write(job):
        checkpoint.save(job.dir / "model.pt", spec, model)
        return {"sparsity": 1.0}

    ticket, _ = store.run("retrain", {"destroyed": 1}, [digits_model.id, "nosearch"], write)
    r = run_cli("export", ticket.path / "model.pt", "--out", run_dir, "--no-nir", "--json")
    assert r.returncode == 0, r.stderr
    onnx = Path(json.loads(r.stdout)["files"]["model.onnx"])
    r = run_cli("validate", onnx, "--against", ticket.path / "model.pt", "--target",
                "x86_64,c-x86_64", "--out", run_dir, "--latency-budget-ms", "1000")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "accuracy vs dense gate failed" in line and "vs dense 9" in line and "ticket " in line
    assert "Traceback" not in r.stderr
    assert pipeline  # the same chain the CLI runs


def test_dense_model_has_no_dense_ancestor(run_dir, digits_model):
    r = run_cli("export", run_dir / digits_model.path.name / "model.pt", "--out", run_dir,
                "--no-nir", "--no-int8", "--json")
    onnx = json.loads(r.stdout)["files"]["model.onnx"]
    r = run_cli("validate", onnx, "--target", "x86_64", "--out", run_dir, "--limit", "50",
                "--latency-budget-ms", "1000", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["report"]
    assert rep["targets"][0]["dense"] is None and "not a ticket" in rep["dense_note"]
    assert [g["status"] for g in rep["targets"][0]["gates"]
            if g["gate"] in ("speedup", "accuracy vs dense")] == ["skipped", "skipped"]


def test_int8_explicitly_asked_and_failing_exits_1_and_fp32_ships(compressed, tmp_path):
    """--int8 at export: a profile that bounds int8 logits tightly (1e-7) fails it (exit 1,
    the fp32 gates pass); the default profile keeps or drops it without failing."""
    ticket = Path(compressed["artifacts"]["ticket"])
    out = Path(compressed["artifacts"]["onnx"]).parent.parent
    r = run_cli("export", ticket, "--out", out, "--no-nir", "--int8", "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    onnx = Path(files["model.onnx"])
    assert (onnx.parent / "model.int8.onnx").stat().st_size < onnx.stat().st_size
    strict = tmp_path / "strict.toml"
    strict.write_text('isa = "x86_64"\n[parity]\nint8_max_abs_logit_diff = 1e-7\n'
                      "[latency]\nbudget_ms = 1000.0\nruns = 20\n")
    r = run_cli("validate", onnx, "--against", ticket, "--target", strict, "--out", out,
                "--max-accuracy-drop", "30")
    assert r.returncode == 1 and "int8 gate failed" in r.stderr and "max |Δlogit|" in r.stderr
    assert "parity gate failed" not in r.stderr
    r = run_cli("validate", onnx, "--against", ticket, "--target", "x86_64", "--out", out,
                "--max-accuracy-drop", "30", "--latency-budget-ms", "1000", "--json")
    entry = json.loads(r.stdout)["report"]["targets"][0]
    assert entry["int8"]["parity"]["agreement"] > 0.9
    assert r.returncode == (0 if entry["int8"]["kept"] else 1)


def test_missing_compiler_exits_2_naming_the_package(compressed, tmp_path):
    onnx = Path(compressed["artifacts"]["onnx"])
    ticket = Path(compressed["artifacts"]["ticket"])
    before = sorted(p.name for p in onnx.parent.parent.iterdir())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cc", "ar"):  # a native compiler but no cross compiler
        os.symlink(shutil.which(tool), bin_dir / tool)
    for target, package, path in (("c-x86_64", "apt-get install gcc", str(tmp_path / "none")),
                                  ("c-arm64-cortex-a72", "gcc-aarch64-linux-gnu", str(bin_dir))):
        env = {**os.environ, "PATH": path}
        p = subprocess.run([__import__("sys").executable, "-m", "cli", "validate", str(onnx),
                            "--against", str(ticket), "--target", target, "--out",
                            str(onnx.parent.parent)], capture_output=True, text=True,
                           env={**env, "PYTHONPATH": str(Path(__file__).parents[1])}, timeout=300)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and package in lines[0] and "Traceback" not in p.stderr
    assert sorted(p.name for p in onnx.parent.parent.iterdir()) == before

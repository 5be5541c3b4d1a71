"""The checks a device runs, in a venv without PyTorch (the README's device install):
`validate --reference` on a bundle's model and reference file, and `verify` timing the model
against latency budgets (the bundle's recorded profile, a given profile, --latency-budget-ms)."""
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli

# A fast timing plan, recorded in the bundle as the x86_64 profile's.
PROFILE = 'name = "x86_64"\nisa = "x86_64"\n[latency]\nbudget_ms = 1000.0\nwarmup = 2\nruns = 30\n'


@pytest.fixture(scope="module")
def device_bundle(digits_model, tmp_path_factory):
    """A bundle of the suite's dense digits model, validated against PyTorch on x86-64."""
    run_dir = tmp_path_factory.mktemp("device-runs")
    shutil.copytree(digits_model.path, run_dir / digits_model.path.name)
    model_pt = run_dir / digits_model.path.name / "model.pt"
    r = run_cli("export", model_pt, "--no-nir", "--no-int8", "--no-c-runtime", "--out", run_dir,
                "--json")
    assert r.returncode == 0, r.stderr
    onnx = Path(json.loads(r.stdout)["files"]["model.onnx"])
    profile = run_dir / "x86_64.toml"
    profile.write_text(PROFILE)
    r = run_cli("validate", onnx, "--against", model_pt, "--limit", "32", "--target", profile,
                "--out", run_dir, "--json")
    assert r.returncode == 0, r.stderr
    r = run_cli("package", json.loads(r.stdout)["path"], "--json")
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["bundle"])


def _device(py: Path, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), "-m", "cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ,
                                                                 "PYTHONPATH": str(ROOT)})


def test_the_device_install_has_no_torch_and_the_cli_imports_without_it(torchless_python):
    mods = ["cli", "pipeline", *(f"commands.{p.stem}" for p in (ROOT / "commands").glob("*.py")
                                 if p.stem != "__init__")]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'norse')))")
    r = subprocess.run([str(torchless_python), "-c", code], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    probe = subprocess.run([str(torchless_python), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0


def test_validate_reference_without_torch(device_bundle, torchless_python, tmp_path):
    with tarfile.open(device_bundle) as tar:
        for m in tar.getmembers():
            if m.name.endswith(("/model.onnx", "/reference.npz")):
                (tmp_path / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    out = tmp_path / "runs"
    r = _device(torchless_python, "validate", tmp_path / "model.onnx", "--reference",
                tmp_path / "reference.npz", "--target", "x86_64", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    report = json.loads((Path(res["path"]) / "report.json").read_text())
    gates = {g["gate"]: g["status"] for g in report["targets"][0]["gates"]}
    assert report["passed"] and gates["parity"] == "pass" and gates["latency"] == "pass"
    assert report["targets"][0]["latency"]["p95_ms"] > 0
    # The PyTorch paths say what they need, in one line, exit 2.
    r = _device(torchless_python, "validate", tmp_path / "model.onnx", "--against",
                tmp_path / "model.pt", "--target", "x86_64", "--out", out)
    assert r.returncode == 2
    assert r.stderr.strip() == "edgeprune: error: --against needs PyTorch; on a device use --reference"


def test_verify_applies_latency_budgets_without_torch(device_bundle, torchless_python,
                                                      tmp_path):
    # The bundle's recorded profile: 1000 ms, met.
    r = _device(torchless_python, "verify", device_bundle, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    run = res["runs"][0]
    assert res["passed"] and run["file"] == "model.onnx" and run["target"] == "x86_64"
    lat = run["latency"]
    assert lat["runs"] == 30 and lat["budget_ms"] == 1000.0 and not lat["emulated"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] < 1000
    assert {g["gate"]: g["status"] for g in run["gates"]} == {"latency": "pass",
                                                              "memory": "pass"}
    print(f"\nverify on x86_64 without torch: p50/p95/p99 {lat['p50_ms']:.3f}/"
          f"{lat['p95_ms']:.3f}/{lat['p99_ms']:.3f} ms")
    # --latency-budget-ms below what it takes: exit 1, both numbers on one line, and --json
    # still reports the runs.
    r = _device(torchless_python, "verify", device_bundle, "--latency-budget-ms", "0.0001",
                "--json")
    assert r.returncode == 1
    line = [l for l in r.stderr.splitlines() if "budget" in l]
    assert len(line) == 1 and "latency p95 " in line[0] and "> budget 0.0001 ms at batch 1 on x86_64 (model.onnx)" in line[0]
    assert f"p95 {json.loads(r.stdout)['runs'][0]['latency']['p95_ms']:.3g} ms" in line[0]
    failed = json.loads(r.stdout)
    assert not failed["passed"] and failed["runs"][0]["latency"]["budget_ms"] == 0.0001
    # A given profile's budget (a path), applied instead of the bundle's.
    tight = tmp_path / "tight.toml"
    tight.write_text('isa = "x86_64"\n[latency]\nbudget_ms = 1e-6\nruns = 5\n')
    r = _device(torchless_python, "verify", device_bundle, "--target", tight)
    assert r.returncode == 1
    assert "> budget 1e-06 ms at batch 1 on tight (model.onnx)" in r.stderr

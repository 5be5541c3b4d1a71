"""A newcomer's first minutes: `edgeprune doctor` tells what this host can run (from the lookups
the runtime uses), help fits a screen, and listings fit 80 columns."""
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from edgeprune.errors import GateFailed, UserError

from .conftest import ROOT, run_cli


def _doctor(env=None, *args):
    p = subprocess.run([sys.executable, "-m", "cli", "doctor", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert p.returncode == 0, p.stderr
    return p


def _targets(report: dict) -> dict:
    return {t["name"]: t for t in report["targets"]}


# -- doctor ------------------------------------------------------------------------------------

def test_doctor_reports_this_host():
    report = json.loads(_doctor({}, "--json").stdout)
    isa = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                      platform.machine().lower())
    assert report["host"]["isa"] == isa and report["host"]["cores"] == os.cpu_count()
    assert report["python"] == platform.python_version()
    for dist in ("torch", "onnxruntime", "onnx", "norse"):
        assert report["packages"][dist] == metadata.version(dist)
    for dist, version in report["frameworks"].items():
        try:
            assert version == metadata.version(dist), dist
        except metadata.PackageNotFoundError:
            assert version is None, dist
    import torch

    assert report["gpu"]["visible"] is torch.cuda.is_available()
    targets = _targets(report)
    assert set(targets) == {p.stem for p in (ROOT / "targets" / "profiles").glob("*.toml")}
    # checked here against PATH directly, not through the probe doctor uses
    has_cc = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
    has_qemu = any(shutil.which(q) for q in ("qemu-aarch64-static", "qemu-aarch64"))
    has_cross = shutil.which("aarch64-linux-gnu-gcc") is not None
    if isa == "x86_64":
        assert targets["x86_64"]["runnable"] and targets["x86_64"]["mode"] == "native"
        assert targets["c-x86_64"]["runnable"] is has_cc
        for name in ("arm64-cortex-a72", "arm64-neoverse-n1"):
            t = targets[name]
            assert t["mode"] == "emulated" and t["runnable"] is has_qemu, t
            if not has_qemu:
                assert t["install"] == "apt-get install qemu-user-static", t
        c_arm = targets["c-arm64-cortex-a72"]
        assert c_arm["runnable"] is (has_cross and has_qemu), c_arm
        # compress's default targets follow the same lookup
        assert report["compress_targets"]["targets"] == ["x86_64"] + ["c-x86_64"] * has_cc
        assert (report["compress_targets"]["note"] is None) is has_cc
        if not has_cross:
            assert "gcc-aarch64-linux-gnu" in c_arm["install"], c_arm
    has_mcu = shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")
    for name in ("c-cortex-m4", "c-cortex-m7"):  # an emulated board, on any host
        t = targets[name]
        assert t["mode"] == "emulated" and t["runnable"] is bool(has_mcu), t
        assert has_mcu or "qemu-system-arm" in t["install"] or "arm-none-eabi" in t["install"]
    datasets = {d["name"]: d for d in report["datasets"]}
    assert datasets["digits"]["found"] and Path(datasets["digits"]["where"]).is_file()
    fashion = Path(datasets["fashion-mnist"]["where"])
    assert datasets["fashion-mnist"]["found"] is (
        fashion / "train-images-idx3-ubyte.gz").exists()
    assert datasets["cifar10"]["found"] is None


def _bin_without_compilers(tmp_path) -> Path:
    """A PATH of symlinks to this host's tools minus every C compiler, plus a stand-in
    qemu-aarch64-static (doctor only looks tools up, it never runs them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ar", "ls", "uname"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    os.symlink(shutil.which("true"), bin_dir / "qemu-aarch64-static")
    return bin_dir


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the PATH cases are written for an x86-64 host")
def test_doctor_follows_path_and_agrees_with_the_runtime(tmp_path, monkeypatch):
    bin_dir = _bin_without_compilers(tmp_path)
    report = json.loads(_doctor({"PATH": str(bin_dir)}, "--json").stdout)
    targets = _targets(report)
    assert not targets["c-x86_64"]["runnable"]
    assert targets["c-x86_64"]["install"] == "apt-get install gcc"
    assert targets["arm64-cortex-a72"]["runnable"]  # the stand-in qemu is on this PATH
    c_arm = targets["c-arm64-cortex-a72"]
    assert not c_arm["runnable"] and "qemu" not in c_arm["install"]
    assert c_arm["install"] == "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    assert report["compress_targets"]["targets"] == ["x86_64"]
    assert "apt-get install gcc" in report["compress_targets"]["note"]
    human = _doctor({"PATH": str(bin_dir), "COLUMNS": "200"}).stdout
    line = next(l for l in human.splitlines() if l.strip().startswith("c-x86_64"))
    assert "NOT runnable" in line
    assert "compress's default targets: x86_64\n" in human

    # the runtime's own lookups on the same PATH refuse the same targets, pointing to doctor
    from targets import c_build, emulation

    monkeypatch.setenv("PATH", str(bin_dir))
    for isa, package in (("x86_64", "apt-get install gcc"), ("aarch64", "gcc-aarch64-linux-gnu")):
        with pytest.raises(UserError) as e:
            c_build.find_compiler(isa)
        assert package in str(e.value) and "(see `edgeprune doctor`)" in str(e.value)
    assert emulation.find_qemu() == str(bin_dir / "qemu-aarch64-static")
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"qemu-user-static.*\(see `edgeprune doctor`\)"):
        emulation.find_qemu()


def test_doctor_runs_without_torch_and_imports_no_framework():
    code = """
import sys, json, io, contextlib
sys.modules['torch'] = None
import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = cli.run(['doctor', '--json'])
report = json.loads(out.getvalue())
loaded = [m for m in ('torch', 'norse', 'snntorch', 'spikingjelly', 'sinabs', 'samna',
                      'rockpool', 'nir', 'nirtorch', 'sklearn') if sys.modules.get(m)]
print(json.dumps({'rc': rc, 'gpu': report['gpu'], 'loaded': loaded,
                  'torch': report['packages']['torch']}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0 and got["loaded"] == [], got
    assert got["gpu"]["visible"] is None and "torch" in got["gpu"]["detail"]
    assert got["torch"] == metadata.version("torch")  # from metadata, not an import


# -- help --------------------------------------------------------------------------------------

CONFIGURED = ("train", "search", "retrain", "export", "validate", "import-model", "compress")


def test_help_fits_a_screen_and_help_all_shows_every_option():
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT)}
    for command in CONFIGURED:
        short = subprocess.run([sys.executable, "-m", "cli", command, "--help"], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=120)
        full = subprocess.run([sys.executable, "-m", "cli", command, "--help-all"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert short.returncode == 0 and full.returncode == 0, (short.stderr, full.stderr)
        n_short, n_full = len(short.stdout.splitlines()), len(full.stdout.splitlines())
        assert n_short <= 60 and n_short < n_full, (command, n_short, n_full)
        assert "--help-all" in short.stdout and "More options" not in full.stdout
        if command == "compress":
            for flag in ("--sparsity", "--method", "--data", "--target", "--package", "--out",
                         "--json", "--config", "--seed", "--device"):
                assert re.search(rf"{flag}\b", short.stdout), flag
            assert "--et-lambda" not in short.stdout and "--et-lambda" in full.stdout
            assert "--retrain-epochs" in full.stdout
            stage_lines = [l for l in short.stdout.splitlines()
                           if re.match(r"\s*(Ticket search|Retraining|Export|Validation):", l)]
            assert len(stage_lines) == 4, short.stdout


# -- listings for 80 columns -------------------------------------------------------------------

@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """A real run directory, small and quick: dense, ticket search (with its round), retrain,
    export, validate (the dense model measured beside the ticket)."""
    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import (DataConfig, ExportConfig, ImpSettings, ModelConfig,
                                  RetrainConfig, SearchConfig, TrainConfig, ValidateConfig)

    run_dir = tmp_path_factory.mktemp("first-run")
    store, data = Store(run_dir), DataConfig("digits", train_subset=300)
    dense, _ = pipeline.train(store, data, ModelConfig(width=0.5), TrainConfig(epochs=2))
    model = dense.path / "model.pt"
    mask, _ = pipeline.search(store, model, SearchConfig(method="imp", sparsity=0.5,
                                                         imp=ImpSettings(0.5), round_epochs=1),
                              data)
    ticket, _ = pipeline.retrain(store, model, mask.path, RetrainConfig(epochs=1), data)
    export, _ = pipeline.export(store, ticket.path / "model.pt", ExportConfig(nir=False))
    try:
        validate, _ = pipeline.validate(store, export.path / "model.onnx",
                                        ValidateConfig(latency_budget_ms=1000.0,
                                                       max_accuracy_drop=100.0),
                                        against=ticket.path / "model.pt")
    except GateFailed as e:  # the figures are what these tests read, not the gates
        validate = e.artifact
    return run_dir, {"train": dense, "search": mask, "retrain": ticket, "export": export,
                     "validate": validate}


def test_ls_fits_80_columns_with_every_figure_whole(lineage):
    from commands import render

    run_dir, arts = lineage
    r = run_cli("ls", run_dir, env_extra={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "…" not in r.stdout and max(len(l) for l in lines) <= 80, r.stdout
    m = {k: a.metrics for k, a in arts.items()}
    for stage, figures in (
            ("train", [f"acc {render.pct(m['train']['test_accuracy'], 1)}"]),
            ("search", [f"sparsity {render.pct(m['search']['sparsity'], 1)}"]),
            ("retrain", [f"acc {render.pct(m['retrain']['test_accuracy'], 1)}",
                         f"sparsity {render.pct(m['retrain']['sparsity'], 1)}"]),
            ("validate", [f"p50 {m['validate']['latency_p50_ms']:.3g} ms"])):
        row = _row(lines, arts[stage].id)
        for f in figures:
            assert f in row, (stage, f, row)
    shown = re.search(r"search ([\d.]+) s", _row(lines, arts["search"].id))
    seconds = m["search"]["search_seconds"]
    assert shown and abs(float(shown.group(1)) - seconds) <= max(0.5, seconds * 0.05), seconds
    assert "ago" in _row(lines, arts["retrain"].id)
    wide = run_cli("ls", run_dir, "--wide", env_extra={"COLUMNS": "250"}).stdout
    assert "test_accuracy=" in wide and "latency_p50_ms=" in wide
    listed = json.loads(run_cli("ls", run_dir, "--json").stdout)["artifacts"]
    assert {a["id"] for a in listed} >= {a.id for a in arts.values()}


def _row(lines: list[str], art_id: str) -> str:
    """The cells of the table row that starts with `art_id` (its continuation lines joined)."""
    start = next(i for i, l in enumerate(lines)
                 if l.count("│") > 2 and l.split("│")[2].strip() == art_id)
    row = [lines[start]]
    for l in lines[start + 1:]:
        if not l.startswith("│  ") or l.split("│")[1].strip():
            break
        row.append(l)
    return " ".join(" ".join(c.strip() for c in l.split("│")) for l in row)


def test_compress_summary_fits_80_columns(lineage):
    from rich.console import Console

    from commands import render, ticket
    from targets import report as report_mod

    _, arts = lineage
    report = json.loads(arts["validate"].file("report.json").read_text())
    rows = report_mod.dense_vs_ticket(report)
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(ticket.ticket_table(arts["retrain"].metrics))
    console.print(ticket.compression_table(rows, report))
    console.print(ticket.deploy_table(report_mod.vs_dense_onnxruntime(report), report["cost"]))
    text = console.export_text()
    assert "…" not in text and max(len(l) for l in text.splitlines()) <= 80, text
    row = rows[0]
    for figure in (render.pct(row["accuracy"]), render.pct(row["dense_accuracy"]),
                   f"{row['size_bytes'] / 1024:,.1f}", f"{row['dense_size_bytes'] / 1024:,.1f}",
                   render.pct(arts["retrain"].metrics["sparsity"])):
        assert figure in text, (figure, text)


def test_age_is_short():
    from datetime import datetime, timezone

    from commands.render import age

    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=timezone.utc)
    assert [age(t, now) for t in ("2026-12-02T11:59:20Z", "2026-12-02T11:55:00Z",
                                  "2026-12-02T09:00:00Z", "2026-11-30T12:00:00Z",
                                  "2026-11-01T08:00:00Z", None)] == [
        "40s ago", "5m ago", "3h ago", "2d ago", "2026-11-01", "-"]

"""targets/: profiles, validation on real ONNX Runtime sessions (native and under QEMU), the
validate/package/verify commands, and bundle integrity."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgeprune.errors import GateFailed, UserError

from .conftest import ROOT, available, requires_qemu, run_cli, skip_unless


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("targets-runs")


@pytest.fixture(scope="session")
def exported(run_dir, digits_model):
    """A real lineage through the library: the suite's dense digits SNN, an imp ticket at 50%,
    retrained and exported. Returns (retrain artifact, export artifact)."""
    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import ImpSettings, RetrainConfig, SearchConfig

    store = Store(run_dir)
    shutil.copytree(digits_model.path, run_dir / digits_model.path.name)  # lineage needs it here
    dense = run_dir / digits_model.path.name / "model.pt"
    mask, _ = pipeline.search(store, dense, SearchConfig(method="imp", sparsity=0.5,
                                                         imp=ImpSettings(0.5)))
    ticket, _ = pipeline.retrain(store, dense, mask.path, RetrainConfig(epochs=4))
    export, _ = pipeline.export(store, ticket.path / "model.pt")
    return ticket, export


@pytest.fixture(scope="session")
def emulator():
    """The cached ARM64 emulator (first use downloads ~170 MB and takes ~20 s). Tests that
    need it skip where qemu-aarch64-static is missing, unless CI says ARM64 is mandatory."""
    from targets import emulation

    skip_unless(requires_qemu)
    return emulation.setup(lambda m: print(m, file=sys.stderr))


# The bundle's targets: emulated Cortex-A72 too where this host can run it.
BUNDLE_TARGETS = ["x86_64", "arm64-cortex-a72"] if available(requires_qemu) else ["x86_64"]


def _profile(name: str, **overrides):
    """A builtin profile with small timing plans, for fast tests."""
    from dataclasses import replace

    from targets import profiles

    p = profiles.load(name)
    p = replace(p, latency=replace(p.latency, warmup=2, runs=20))
    if p.emulation:
        p = replace(p, emulation=replace(p.emulation, max_inputs=16, warmup=1, runs=3))
    return replace(p, **overrides)


def _digits(n: int):
    from edgeprune import data

    ds = data.load("digits")
    return ds.x_test.numpy()[:n], ds.y_test.numpy()[:n]


# -- profiles --------------------------------------------------------------------------------

def test_builtin_profiles_load():
    from targets import profiles

    assert profiles.builtin_names() == ["arm64-cortex-a72", "arm64-neoverse-n1",
                                        "c-arm64-cortex-a72", "c-cortex-m4", "c-cortex-m7",
                                        "c-x86_64", "x86_64"]
    a72, n1, ca72, m4, m7, cx86, x86 = (profiles.load(n) for n in profiles.builtin_names())
    assert (m4.kind, m4.isa, m4.mcu.board, m7.mcu.board) == ("c", "armv7e-m", "mps2-an386",
                                                             "mps2-an500")
    assert m4.mcu.flash_kb > 0 and m4.mcu.ram_kb > 0 and m4.remote is None
    assert "mcu" not in x86.to_dict() and m4.to_dict()["mcu"]["board"] == "mps2-an386"
    assert (ca72.kind, ca72.isa, ca72.runtime.mcpu) == ("c", "aarch64", "cortex-a72")
    assert (cx86.kind, cx86.isa, cx86.emulation) == ("c", "x86_64", None)
    assert x86.kind == a72.kind == "onnxruntime"
    assert x86.dense.max_accuracy_drop == cx86.dense.max_accuracy_drop == 5.0
    assert (a72.isa, a72.emulation.qemu_cpu) == ("aarch64", "cortex-a72")
    assert (n1.isa, n1.emulation.qemu_cpu) == ("aarch64", "neoverse-n1")
    assert x86.isa == "x86_64" and x86.emulation is None
    assert [p.name for p in profiles.load_many("x86_64,arm64-neoverse-n1")] == ["x86_64",
                                                                               "arm64-neoverse-n1"]


@pytest.mark.parametrize("text, needle", [
    ('isa = "x86_64"\n[latency]\nbudget = 3.0\n', "unknown key latency.'budget'"),
    ('isa = "x86_64"\ncolour = "red"\n', "unknown key 'colour'"),
    ('isa = "x86_64"\n[latency]\nbudget_ms = "fast"\n', "latency.budget_ms must be float"),
    ('isa = "x86_64"\n[runtime]\nintra_op_threads = true\n', "must be int, got bool"),
    ('isa = "riscv"\n', "isa must be one of"),
    ('isa = "x86_64"\n[accuracy]\nmax_drop = 5\n', "a fraction"),
    ('isa = "x86_64\n', "not valid TOML"),
    ('isa = "armv7e-m"\n[runtime]\nkind = "c"\n', "an [mcu] table go together"),
    ('isa = "x86_64"\n[mcu]\nboard = "mps2-an386"\n', "an [mcu] table go together"),
    ('isa = "armv7e-m"\n[runtime]\nkind = "c"\n[mcu]\nboard = "stm32"\n',
     "mcu.board must be one of mps2-an386, mps2-an500"),
    ('isa = "armv7e-m"\n[mcu]\nboard = "mps2-an386"\n', "runs the C runtime"),
    ('isa = "armv7e-m"\n[runtime]\nkind = "c"\n[mcu]\nboard = "mps2-an386"\nram_kb = -1\n',
     "mcu.flash_kb and mcu.ram_kb must be >= 0"),
    ('isa = "armv7e-m"\n[runtime]\nkind = "c"\n[mcu]\nboard = "mps2-an500"\n'
     'stack_bytes = 100\n', "mcu.stack_bytes must be a multiple of 8"),
])
def test_bad_profile_is_one_line_user_error(tmp_path, text, needle):
    from targets import profiles

    path = tmp_path / "my.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        profiles.load(str(path))
    assert needle in str(e.value)


def test_copied_profile_loads_by_path(tmp_path):
    from targets import profiles

    src = (ROOT / "targets" / "profiles" / "arm64-cortex-a72.toml").read_text()
    path = tmp_path / "pi4-tight.toml"
    path.write_text(src.replace("budget_ms = 20.0", "budget_ms = 7.5"))
    p = profiles.load(str(path))
    assert (p.name, p.latency.budget_ms, p.emulation.qemu_cpu) == ("pi4-tight", 7.5, "cortex-a72")
    with pytest.raises(UserError, match="unknown target 'pi5'"):
        profiles.load("pi5")


# -- torch-free --------------------------------------------------------------------------------

def test_targets_never_imports_torch(exported, tmp_path):
    """targets/ imported and run with torch made unimportable (as on a device)."""
    _, export = exported
    x, y = _digits(8)
    np.savez(tmp_path / "ref.npz", inputs=x, logits=np.zeros((8, 10), np.float32), labels=y)
    code = f"""
import sys; sys.modules['torch'] = None
from pathlib import Path
import targets, targets.profiles, targets.runtime, targets.emulation, targets.runner
import targets.validation, targets.report, targets.validate_stage, targets.bundle, targets.archive
import targets.modelcard, targets.modelfile
from targets import modelfile, validate_stage, validation, profiles
info = modelfile.inspect(Path({str(export.path / 'model.onnx')!r}))
inputs, ref, labels, src = validate_stage.load_reference(Path({str(tmp_path / 'ref.npz')!r}))
v = validation.validate(info, [profiles.load('x86_64')], inputs, labels)
assert v.outputs['x86_64'].shape == (8, 10), v.outputs['x86_64'].shape
assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m])
print('ok')
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]
    for src in (ROOT / "targets").glob("*.py"):
        text = src.read_text()
        assert "import torch" not in text and "from torch" not in text, src
        for line in text.splitlines():
            if line.strip().startswith(("from edgeprune", "import edgeprune")):
                allowed = ("errors", "artifacts", "hashing", "config", "bounded_read",
                           "names", "diskspace")  # torch-free
                assert (any(f"edgeprune.{m} " in line for m in allowed)
                        or line.strip() in [f"from edgeprune import {m}"
                                            for m in ("__version__", *allowed)]), (src, line)


# -- validate (native) ---------------------------------------------------------------------------

def test_validate_against_pytorch_stores_report(exported, run_dir):
    train, export = exported
    r = run_cli("validate", export.path / "model.onnx", "--against", train.path / "model.pt",
                "--target", "x86_64", "--out", run_dir, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    art = Path(out["path"])
    assert {"report.json", "report.md", "reference.npz", "manifest.json"} <= {
        p.name for p in art.iterdir()}
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["inputs"][:2] == [export.id, train.id]  # the ticket it was exported from
    # ... and the dense model's export, measured side by side on the same target
    entry = out["report"]["targets"][0]
    assert manifest["inputs"][2:] == [entry["dense"]["artifact"]]
    assert entry["dense_accuracy"] > 0.9 and entry["speedup_vs_dense"] > 0
    assert entry["accuracy_drop_vs_dense"] == pytest.approx(
        (entry["dense_accuracy"] - entry["accuracy"]) * 100)
    assert [g["gate"] for g in entry["gates"]][-2:] == ["speedup", "accuracy vs dense"]
    (e,) = out["report"]["targets"]
    assert e["mode"] == "native" and e["inputs"] == 360
    # same class everywhere; logits within 1e-3 on all but a spike-flip or two
    assert e["parity"]["agreement"] == 1.0 and e["parity"]["within_tolerance"] >= 358 / 360
    assert e["accuracy_drop"] == 0.0 and e["accuracy"] > 0.9
    lat = e["latency"]
    assert lat["runs"] == 200 and 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert e["memory"]["peak_rss_delta_mb"] > 0 and "fresh runner process" in e["memory"]["method"]
    gates = {g["gate"]: g["status"] for g in e["gates"]}
    assert {k: gates[k] for k in ("parity", "accuracy", "latency", "memory")} == {
        "parity": "pass", "accuracy": "pass", "latency": "pass", "memory": "pass"}
    # int8 is kept or not (never fails unasked), speed-up has no minimum by default
    assert gates["int8"] in ("pass", "skipped") and gates["speedup"] == "skipped"
    assert gates["accuracy vs dense"] == "pass"
    assert "| x86_64 | native |" in (art / "report.md").read_text()
    # The same command again is a cache hit on the same artifact.
    again = run_cli("validate", export.path / "model.onnx", "--against", train.path / "model.pt",
                    "--out", run_dir, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["cached"] is True
    assert json.loads(again.stdout)["id"] == out["id"]


def test_latency_budget_gate_exit_codes(exported, run_dir):
    _, export = exported
    args = ("validate", export.path / "model.onnx", "--limit", "20", "--out", run_dir, "--json")
    below = run_cli(*args, "--latency-budget-ms", "0.0001")
    assert below.returncode == 1, below.stderr
    err = below.stderr.strip().splitlines()[-1]
    assert "latency gate failed" in err and "budget 0.0001 ms" in err and "p95" in err
    report = json.loads(below.stdout)  # the report is stored and printed before exit 1
    assert report["passed"] is False and Path(report["path"], "report.json").exists()
    refused = run_cli("package", report["path"])  # a model that failed a gate is not released
    assert refused.returncode == 1 and "failed its gates" in refused.stderr, refused.stderr
    above = run_cli(*args, "--latency-budget-ms", "100000")
    assert above.returncode == 0, above.stderr
    assert json.loads(above.stdout)["passed"] is True


def test_bad_onnx_is_user_error_and_writes_nothing(tmp_path, exported):
    _, export = exported
    good = (export.path / "model.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    out = tmp_path / "runs"
    r = run_cli("validate", tmp_path / "trunc.onnx", "--out", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a valid ONNX model" in r.stderr
    assert not out.exists() or not any(out.iterdir())
    r = run_cli("validate", export.path / "model.onnx", "--target", "x86_64,nope", "--out", out)
    assert r.returncode == 2 and "unknown target 'nope'" in r.stderr


# -- ARM64 under QEMU --------------------------------------------------------------------------

@requires_qemu
def test_arm64_emulated_matches_x86(exported, run_dir, emulator):
    from targets import modelfile, validate_stage
    from edgeprune.artifacts import Store

    train, export = exported
    x, y = _digits(24)
    info = modelfile.inspect(export.path / "model.onnx")
    profs = [_profile("x86_64"), _profile("arm64-cortex-a72"), _profile("arm64-neoverse-n1")]
    art, _ = validate_stage.run_validate(Store(run_dir), export.path / "model.onnx", profs,
                                modelfile.model_inputs(x, info), y, data_name="digits[:24]",
                                info=info)
    report = json.loads(art.file("report.json").read_text())
    x86, a72, n1 = report["targets"]
    assert x86["mode"] == "native" and x86["machine"] == "x86_64"
    for arm, core in ((a72, "cortex-a72"), (n1, "neoverse-n1")):
        assert arm["mode"] == "emulated" and arm["machine"] == "aarch64", arm
        assert core in arm["command"] and arm["onnxruntime"] == x86["onnxruntime"]
        assert arm["inputs"] == 16  # the profile's emulation.max_inputs
        assert arm["latency"]["note"] == "emulated — not indicative"
        gates = {g["gate"]: g["status"] for g in arm["gates"]}
        assert gates["latency"] == "skipped" and gates["memory"] == "skipped"
        vs = arm["vs_first_target"]
        assert vs["target"] == "x86_64" and vs["inputs"] == 16
        assert vs["agreement"] == 1.0 and vs["max_abs_diff"] <= 1e-5, vs
    print(f"\nARM64 vs x86-64: a72 max|Δ| {a72['vs_first_target']['max_abs_diff']:.3g}, "
          f"n1 {n1['vs_first_target']['max_abs_diff']:.3g}; emulated p50 "
          f"{a72['latency']['p50_ms']:.2f} / {n1['latency']['p50_ms']:.2f} ms vs native "
          f"{x86['latency']['p50_ms']:.3f} ms; setup {emulator.setup_seconds:.1f} s")


def test_missing_qemu_is_a_clear_user_error(monkeypatch):
    from targets import emulation

    monkeypatch.setattr(emulation.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install qemu-user-static"):
        emulation.setup()


# -- package and verify ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bundle(exported, run_dir, request):
    """A package of the export, validated against PyTorch on x86-64 and (where QEMU is)
    emulated Cortex-A72."""
    _, export = exported
    train, _ = exported
    if len(BUNDLE_TARGETS) > 1:
        request.getfixturevalue("emulator")
    r = run_cli("validate", export.path / "model.onnx", "--against", train.path / "model.pt",
                "--limit", "32", "--target", ",".join(BUNDLE_TARGETS), "--out", run_dir, "--json")
    assert r.returncode == 0, r.stderr
    val = Path(json.loads(r.stdout)["path"])
    r = run_cli("package", val, "--ort", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    print(f"\nbundle: {out['metrics']['bytes']:,} bytes, {out['metrics']['files']} files")
    return Path(out["bundle"]), val


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_bundle_manifest_and_model_card(bundle, exported):
    import hashlib

    path, val = bundle
    ticket, export = exported
    files = _members(path)
    top = f"edgeprune-{export.id}"
    names = {n.split("/", 1)[1] for n in files}
    arm = "arm64-cortex-a72" in BUNDLE_TARGETS
    assert {"model.onnx", "model.amd64.ort", "reference.npz", "MODEL_CARD.md",
            "manifest.json", f"reports/validate-{val.name.split('-')[1]}/report.json"} <= names
    assert ("model.arm.ort" in names) == arm
    manifest = json.loads(files[f"{top}/manifest.json"])
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(files[f"{top}/{name}"]).hexdigest() == entry["sha256"], name
    assert set(manifest["files"]) == names - {"manifest.json"}
    stages = [e["stage"] for e in manifest["lineage"]]
    # the ticket's export, then the dense model's (measured next to it by validate)
    assert stages == ["train", "search", "retrain", "export", "export", "validate"]
    assert manifest["lineage"][2]["id"] == ticket.id and manifest["lineage"][0]["config"]["model"]
    assert all("metrics" in e and "config" in e for e in manifest["lineage"])
    with np.load(io.BytesIO(files[f"{top}/reference.npz"])) as z:
        assert z["inputs"].shape == (16, 1, 8, 8) and z["logits"].shape == (16, 10)
        assert str(z["source"]).startswith("pytorch:")
    card = files[f"{top}/MODEL_CARD.md"].decode()
    front = card.split("---\n")[1]
    for line in ("library_name: onnx", '  timesteps: 5', '  encoding: "direct"',
                 '  reset: "value"', '  ticket_method: "imp"', '  search_timesteps: 5',
                 '  rewind_point: 1', "  sparsity: 0.5", "datasets:\n- \"digits\""):
        assert line in front, line
    assert '"onnxruntime": "1.' in front and '"target": "x86_64"' in front
    assert ('"target": "arm64-cortex-a72"' in front) == arm
    assert '"max_abs_logit_diff": 0.001' in front and "tau_mem_inv=0.75" in front
    assert "| ticket method | imp |" in card and "| search timesteps T′ | 5 |" in card
    assert "## What the compression bought" in card and "| x86_64 | onnxruntime |" in card


def _flipped(path: Path, member: str, out: Path) -> Path:
    """A copy of the bundle with one byte of `member` flipped."""
    from targets import archive

    files = _members(path)
    top = next(iter(files)).split("/")[0]
    data = bytearray(files[member])
    data[len(data) // 2] ^= 0x01
    files[member] = bytes(data)
    out.write_bytes(archive.pack(top, {n.split("/", 1)[1]: b for n, b in files.items()}))
    return out


def test_verify_passes_then_fails_on_each_flipped_byte(bundle, tmp_path):
    from targets import bundle as bundle_mod

    path, _ = bundle
    result = bundle_mod.verify(path, "x86_64")
    assert result["passed"] and {r["file"] for r in result["runs"]} == {"model.onnx",
                                                                         "model.amd64.ort"}
    members = sorted(_members(path))
    assert len(members) >= 10
    for member in members:
        bad = _flipped(path, member, tmp_path / "bad.tar.gz")
        with pytest.raises(GateFailed) as e:
            bundle_mod.verify(bad, "x86_64")
        assert member.split("/", 1)[1] in str(e.value), (member, str(e.value))
    # and through the CLI: exit 1, one line naming the file
    bad = _flipped(path, next(m for m in members if m.endswith("/model.onnx")),
                   tmp_path / "bad.tar.gz")
    r = run_cli("verify", bad, "--target", "x86_64")
    assert r.returncode == 1 and "model.onnx does not match its sha256" in r.stderr, r.stderr


@requires_qemu
def test_verify_on_emulated_arm64(bundle):
    if "arm64-cortex-a72" not in BUNDLE_TARGETS:
        pytest.skip("the bundle was validated without ARM64")
    path, _ = bundle
    r = run_cli("verify", path, "--target", "arm64-cortex-a72", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {(x["file"], x["machine"]) for x in out["runs"]} == {("model.onnx", "aarch64"),
                                                                ("model.arm.ort", "aarch64")}
    assert all(x["passed"] and x["max_abs_diff"] < 1e-4 for x in out["runs"])


def test_verify_refuses_unsafe_members(tmp_path):
    def tar_with(member: tarfile.TarInfo, data: bytes = b"x") -> Path:
        path = tmp_path / "evil.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            ok = tarfile.TarInfo("b/manifest.json")
            ok.size = 2
            tar.addfile(ok, io.BytesIO(b"{}"))
            member.size = len(data) if member.isfile() else 0
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
        return path

    evil = tarfile.TarInfo("b/../../evil")
    r = run_cli("verify", tar_with(evil), cwd=tmp_path)
    assert r.returncode == 2 and "'..'" in r.stderr and "refusing" in r.stderr, r.stderr
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    link = tarfile.TarInfo("b/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    r = run_cli("verify", tar_with(link))
    assert r.returncode == 2 and "a link" in r.stderr
    absolute = tarfile.TarInfo("/tmp/evil-abs")
    r = run_cli("verify", tar_with(absolute))
    assert r.returncode == 2 and "absolute path" in r.stderr
    dev = tarfile.TarInfo("b/dev")
    dev.type = tarfile.CHRTYPE
    r = run_cli("verify", tar_with(dev))
    assert r.returncode == 2 and "device" in r.stderr


def test_verify_without_torch(bundle, torchless_python):
    path, _ = bundle
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run([str(torchless_python), "-c", "import torch"], capture_output=True,
                           env=env)
    assert probe.returncode != 0  # really no torch here
    r = subprocess.run([str(torchless_python), "-m", "cli", "verify", str(path), "--target",
                        "x86_64", "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] and out["files_checked"] >= 10

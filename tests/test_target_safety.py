"""What a target profile, a missing tool or a kill can do to the host: profile names stay plain
names (nothing written outside the run), non-finite or absurd numbers are bad input, a missing
compiler is refused before any training, and runner processes and their temporary folders do not
outlive a killed edgeprune. Through the CLI, on real exported models and real processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, one_line_exit_2, run_cli

HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang")) and bool(shutil.which("ar"))


def _need_cc():
    if not HAVE_CC and os.environ.get("EDGEPRUNE_REQUIRE_CC") != "1":
        pytest.skip("no C compiler and ar installed (apt-get install gcc)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits_model):
    """The suite's dense digits model exported with its C runtime: (run dir, model.onnx)."""
    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import ExportConfig

    run_dir = tmp_path_factory.mktemp("safety-runs")
    shutil.copytree(digits_model.path, run_dir / digits_model.path.name)
    art, _ = pipeline.export(Store(run_dir), run_dir / digits_model.path.name / "model.pt",
                             ExportConfig(nir=False, int8=False, c_runtime=True, probe=32))
    return run_dir, art.path / "model.onnx"


def _profile(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


_one_line_exit_2 = one_line_exit_2


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- profile names are not paths ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["ABSOLUTE", "../../escaped", "sub/dir", ".hidden", "..",
                                  "x" * 65, "tab\there"])
def test_a_profile_name_that_is_a_path_is_refused(exported, tmp_path, name):
    """Before: `name = "/some/dir"` made validate write runner and libmodel.a there, exit 0."""
    _need_cc()
    run_dir, onnx = exported
    outside = tmp_path / "outside"
    name = str(outside) if name == "ABSOLUTE" else name
    prof = _profile(tmp_path / "evil.toml",
                    f'name = {json.dumps(name)}\nisa = "x86_64"\n[runtime]\nkind = "c"\n'
                    '[latency]\nruns = 2\nwarmup = 0\nbudget_ms = 1000.0\n')
    out = tmp_path / "runs"
    shutil.copytree(run_dir, out)
    before = _tree(out)
    r = run_cli("validate", out / onnx.parent.name / "model.onnx", "--target", prof,
                "--no-dense", "--limit", "4", "--out", out)
    line = _one_line_exit_2(r, "is not a plain name", "evil.toml")
    assert len(line) < 400
    assert not outside.exists()
    assert _tree(out) == before  # no artifact, no scratch


def test_a_profile_file_name_that_is_no_name_says_how_to_name_it(exported, tmp_path):
    run_dir, onnx = exported
    prof = _profile(tmp_path / "my target.toml", 'isa = "x86_64"\n')
    r = run_cli("validate", onnx, "--target", prof, "--out", tmp_path / "runs")
    _one_line_exit_2(r, "'my target' is not a plain name", 'set name = "..."')
    named = _profile(tmp_path / "my target 2.toml", 'name = "mine"\nisa = "x86_64"\n'
                     '[latency]\nruns = 2\nwarmup = 0\nbudget_ms = 1000.0\n')
    r = run_cli("validate", onnx, "--target", named, "--no-dense", "--limit", "4", "--out",
                tmp_path / "runs", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [t["target"] for t in json.loads(r.stdout)["report"]["targets"]] == ["mine"]


def test_every_way_of_making_a_profile_checks_its_name():
    from dataclasses import replace

    from edgeprune.errors import UserError
    from targets import profiles

    base = profiles.load("c-x86_64")
    for bad in ("/etc", "../x", "a/b", ".", "", "é", "x\n"):
        with pytest.raises(UserError, match="not a plain name"):
            replace(base, name=bad)
        with pytest.raises(UserError, match="not a plain name"):  # a bundle manifest's profile
            raw = {k: v for k, v in base.to_dict().items() if v is not None}
            profiles.from_dict({**raw, "name": bad}, "c-x86_64", "bundle manifest")
    for good in ("c-x86_64", "Pi4_v1.2", "a" * 64):
        assert replace(base, name=good).name == good


# -- numbers: finite, in range, bounded --------------------------------------------------------

NUMBERS = [
    ("latency.budget_ms", "nan"), ("latency.budget_ms", "inf"), ("latency.budget_ms", "-1.0"),
    ("latency.percentile", "nan"), ("memory.budget_mb", "nan"), ("memory.budget_mb", "-inf"),
    ("parity.max_abs_logit_diff", "nan"), ("parity.min_agreement", "nan"),
    ("parity.min_within_tolerance", "-0.5"), ("parity.int8_max_abs_logit_diff", "nan"),
    ("parity.int8_max_abs_logit_diff", "-1.0"), ("accuracy.max_drop", "nan"),
    ("dense.min_speedup", "inf"), ("dense.max_accuracy_drop", "nan"),
    ("latency.runs", "1_000_000_000"), ("latency.warmup", "1_000_000_000"),
    ("latency.batch_size", "100_000_000"), ("runtime.intra_op_threads", "1_000_000"),
    ("emulation.runs", "1_000_000_000"), ("emulation.warmup", "-1"),
]


def _number_profile(folder: Path, key: str, value: str) -> Path:
    section, field = key.split(".")
    isa = "aarch64" if section == "emulation" else "x86_64"
    return _profile(folder / "p.toml", f'name = "p"\nisa = "{isa}"\n[{section}]\n'
                                       f"{field} = {value}\n")


@pytest.mark.parametrize("key,value", NUMBERS)
def test_non_finite_negative_or_absurd_numbers_are_refused_naming_the_key(tmp_path, key, value):
    from edgeprune.errors import UserError
    from targets import profiles

    with pytest.raises(UserError) as e:
        profiles.load(str(_number_profile(tmp_path, key, value)))
    line = str(e.value)
    assert key in line and "p.toml" in line and "\n" not in line
    if value in ("nan", "inf", "-inf"):
        assert "finite" in line
    if value.startswith("1_000_000"):
        assert "at most" in line  # the maximum is stated


@pytest.mark.parametrize("key,value", [("latency.budget_ms", "nan"),
                                       ("parity.max_abs_logit_diff", "nan"),
                                       ("latency.runs", "1_000_000_000")])
def test_the_cli_refuses_them_as_bad_input_not_as_a_failed_gate(exported, tmp_path, key, value):
    """Before: a NaN budget or tolerance was accepted, then failed as a gate (exit 1)."""
    run_dir, onnx = exported
    out = tmp_path / "runs"
    r = run_cli("validate", onnx, "--target", _number_profile(tmp_path, key, value),
                "--limit", "4", "--no-dense", "--out", out)
    _one_line_exit_2(r, key)
    assert not out.exists()


def test_an_infinite_budget_on_the_command_line_is_refused(exported, tmp_path):
    run_dir, onnx = exported
    r = run_cli("validate", onnx, "--latency-budget-ms", "inf", "--out", tmp_path / "runs")
    _one_line_exit_2(r, "latency.budget_ms", "finite")


# -- a missing compiler is refused before any work ---------------------------------------------

def _bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only `tools` (symlinks to this host's)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    return str(bin_dir)


@pytest.mark.parametrize("target,tools,package", [
    ("c-x86_64", (), "apt-get install gcc"),
    ("x86_64,c-x86_64", ("gcc",), "apt-get install binutils"),  # a compiler, but no ar
    ("c-arm64-cortex-a72", ("cc", "ar"), "gcc-aarch64-linux-gnu"),
    ("arm64-cortex-a72", (), "qemu-user-static"),
])
def test_compress_refuses_a_missing_tool_before_training(tmp_path, target, tools, package):
    from targets import runtime

    if runtime.host_isa() != "x86_64" and "arm64" in target:
        pytest.skip("the ARM64 targets run natively on this host")
    if tools:
        _need_cc()
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": _bare_path(tmp_path, *tools)}
    p = subprocess.run([sys.executable, "-m", "cli", "compress", "--data", "digits", "--target",
                        target, "--out", str(out)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    _one_line_exit_2(p, package)
    assert not out.exists() or not any(out.iterdir())  # nothing trained, nothing written


def test_validate_refuses_a_missing_compiler_before_any_work(exported, tmp_path):
    run_dir, onnx = exported
    before = _tree(run_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": _bare_path(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "cli", "validate", str(onnx), "--target",
                        "c-x86_64", "--out", str(run_dir)], capture_output=True, text=True,
                       env=env, timeout=300)
    _one_line_exit_2(p, "apt-get install gcc")
    assert _tree(run_dir) == before


# -- children and temporary folders do not outlive a killed edgeprune -------------------------

def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return state, int(ppid)


def _alive(pid: int) -> bool:
    s = _stat(pid)
    return s is not None and s[0] not in "ZX"  # a zombie has run its last instruction


def _child_running(parent: subprocess.Popen, word: str, timeout: float = 300) -> int:
    """The pid of `parent`'s child whose command line contains `word`, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, f"edgeprune ended (exit {parent.returncode}) first"
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (_stat(int(entry.name)) or ("", 0))[1] == parent.pid:
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(word.encode() in a for a in argv):
                    return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no child running {word!r} within {timeout} s")


def _start_validate(onnx: Path, target: Path, out: Path, tmp: Path) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    return subprocess.Popen([sys.executable, "-m", "cli", "validate", str(onnx), "--target",
                             str(target), "--no-dense", "--limit", "4", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _ours(tmp: Path) -> list[Path]:
    """What edgeprune left in a temp dir (ONNX Runtime keeps its own `.ses` id file there)."""
    return [p for p in tmp.iterdir() if "edgeprune" in p.name]


def _sigkill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stderr.close()


@pytest.mark.parametrize("kind,word", [("onnxruntime", "runner.py"), ("c", "--bench")])
def test_a_runner_dies_with_a_killed_edgeprune(exported, tmp_path, kind, word):
    """Before: the ONNX Runtime runner of a 10^6-run profile ran on at 99% CPU under init."""
    if kind == "c":
        _need_cc()
    run_dir, onnx = exported
    prof = _profile(tmp_path / "long.toml", f'name = "long"\nisa = "x86_64"\n[runtime]\n'
                    f'kind = "{kind}"\n[latency]\nruns = 1_000_000\nwarmup = 0\n'
                    'budget_ms = 1000.0\n')  # minutes of timed runs
    parent = _start_validate(onnx, prof, tmp_path / "runs", tmp_path / "tmp")
    try:
        pid = _child_running(parent, word)
        assert _alive(pid)
    finally:
        _sigkill(parent)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid), f"runner {pid} outlived its killed parent"
    assert not _ours(tmp_path / "tmp")  # nothing in the system temp dir


def test_a_killed_c_validation_leaves_no_temp_folder_and_the_next_run_cleans_up(exported,
                                                                                 tmp_path):
    """Before: edgeprune-run-*, -keep-* and -c-* folders stayed in the system temp dir."""
    _need_cc()
    run_dir, onnx = exported
    prof = _profile(tmp_path / "c.toml", 'name = "c"\nisa = "x86_64"\n[runtime]\nkind = "c"\n'
                    '[latency]\nruns = 50_000\nwarmup = 0\nbudget_ms = 1000.0\n')  # ~2 s
    out, tmp = tmp_path / "runs", tmp_path / "tmp"
    parent = _start_validate(onnx, prof, out, tmp)
    try:
        _child_running(parent, "--bench")  # killed mid-run: built, inputs run, timing
    finally:
        _sigkill(parent)
    assert not _ours(tmp)
    stale = [p for p in out.iterdir() if p.name.startswith(".validate-")]
    assert len(stale) == 1 and list(stale[0].glob(".scratch-*/edgeprune-c-*/build/runner"))
    again = _start_validate(onnx, prof, out, tmp)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()[-2000:]
    assert not stale[0].exists() and not _ours(tmp)
    art = next(out.glob("validate-*"))
    assert (art / "c.runner").is_file() and not list(art.glob(".*"))  # no scratch shipped

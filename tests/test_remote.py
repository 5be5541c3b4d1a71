"""`validate --remote` and `verify --remote`: a board over SSH, here an sshd the test starts on
127.0.0.1 with throwaway keys (host key, authorized_keys, known_hosts, all in a tmp dir). ONNX
Runtime runs through the board's Python (this venv's, named with --remote-python), the C runner
is built here and copied there; latency and memory are measured there and gated. Each way a
board can fail (unreachable, a refused key, no onnxruntime there, a dropped connection) exits 2
with one line, stores nothing and leaves nothing on the board."""
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import one_line_exit_2, requires_cc, requires_ssh, run_cli

pytestmark = [requires_ssh, requires_cc]

FAST = '[latency]\nbudget_ms = 1000.0\nwarmup = 2\nruns = 30\n'
PROFILES = {"fast-ort": 'isa = "x86_64"\n' + FAST,
            "fast-c": 'isa = "x86_64"\n[runtime]\nkind = "c"\n' + FAST}


class Board:
    def __init__(self, root: Path, port: int):
        self.root, self.port, self.user = root, port, getpass.getuser()
        self.config = root / "ssh_config"
        self.tmp = root / "board-tmp"  # the board's TMPDIR: what mktemp -d makes there

    def args(self, alias: str = "board", python: str = sys.executable) -> list[str]:
        return ["--remote", alias, "--ssh-config", self.config, "--remote-python", python]

    def leftovers(self) -> list[str]:
        """The folders `mktemp -d` made on the board that are still there (other files the
        login session leaves in TMPDIR, such as a shell's `.ses`, are not edgeprune's)."""
        return sorted(p.name for p in self.tmp.glob("tmp.*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    for key in ("host_key", "user_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / key],
                       check=True)
    shutil.copyfile(root / "user_key.pub", root / "authorized_keys")
    if os.geteuid() == 0:  # sshd run as root wants its privilege separation folder
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    port = _free_port()
    b = Board(root, port)
    b.tmp.mkdir()
    sshd = subprocess.Popen(
        [shutil.which("sshd") or "sshd", "-D", "-e", "-f", "/dev/null", "-p", str(port),
         "-h", str(root / "host_key"), "-o", "ListenAddress=127.0.0.1",
         "-o", f"AuthorizedKeysFile={root / 'authorized_keys'}", "-o", "StrictModes=no",
         "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
         "-o", "UsePAM=no", "-o", "PidFile=none", "-o", "PermitRootLogin=prohibit-password",
         "-o", f"SetEnv=TMPDIR={b.tmp}"], stderr=subprocess.PIPE, text=True)
    try:
        line = sshd.stderr.readline()
        assert "Server listening" in line, line + (sshd.stderr.read() if sshd.poll() else "")
        host_key = " ".join((root / "host_key.pub").read_text().split()[:2])
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
        common = (f"  HostName 127.0.0.1\n  Port {port}\n  User {b.user}\n  IdentitiesOnly yes\n"
                  f"  UserKnownHostsFile {root / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
        b.config.write_text(f"Host board 127.0.0.1\n{common}  IdentityFile {root / 'user_key'}\n"
                            f"Host stranger\n{common}  IdentityFile {root / 'stranger_key'}\n")
        yield b
    finally:
        sshd.kill()
        sshd.wait()


@pytest.fixture(scope="module")
def validated(digits_model, tmp_path_factory):
    """The dense digits model exported with its C runtime, validated here on ONNX Runtime and
    the C runtime (fast timing plans), and its bundle."""
    run_dir = tmp_path_factory.mktemp("remote-runs")
    shutil.copytree(digits_model.path, run_dir / digits_model.path.name)
    model_pt = run_dir / digits_model.path.name / "model.pt"
    r = run_cli("export", model_pt, "--no-nir", "--no-int8", "--c-runtime", "--out", run_dir,
                "--json")
    assert r.returncode == 0, r.stderr
    onnx = Path(json.loads(r.stdout)["files"]["model.onnx"])
    for name, text in PROFILES.items():
        (run_dir / f"{name}.toml").write_text(text)
    targets = ",".join(str(run_dir / f"{n}.toml") for n in PROFILES)
    r = run_cli("validate", onnx, "--against", model_pt, "--limit", "32", "--target", targets,
                "--no-dense", "--out", run_dir, "--json")
    assert r.returncode == 0, r.stderr
    art = Path(json.loads(r.stdout)["path"])
    r = run_cli("package", art, "--json")
    assert r.returncode == 0, r.stderr
    return {"onnx": onnx, "reference": art / "reference.npz", "targets": targets,
            "bundle": Path(json.loads(r.stdout)["bundle"]), "run_dir": run_dir}


def test_validate_runs_ort_and_the_c_runner_on_the_board(board, validated, tmp_path):
    r = run_cli("validate", validated["onnx"], "--reference", validated["reference"],
                "--target", validated["targets"], "--out", tmp_path, "--json",
                *board.args())
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((Path(json.loads(r.stdout)["path"]) / "report.json").read_text())
    local = json.loads((validated["reference"].parent / "report.json").read_text())
    for e, here in zip(report["targets"], local["targets"]):
        assert e["mode"] == "remote" and e["target"] == here["target"], e
        assert e["command"].startswith("ssh board"), e["command"]
        assert e["parity"]["agreement"] == 1.0 and e["inputs"] == len(np.load(
            validated["reference"])["logits"])  # every reference input
        gates = {g["gate"]: g for g in e["gates"]}
        # measured on the board, so gated (not skipped as under emulation)
        assert gates["latency"]["status"] == "pass" and "budget 1000 ms" in \
            gates["latency"]["detail"], gates
        assert gates["memory"]["status"] == "pass", gates
        assert not e["latency"]["emulated"] and e["latency"]["runs"] == 30
        assert e["profile"]["remote"]["host"] == "board"
    ort, c = report["targets"]
    assert ort["runtime"] == "onnxruntime" and ort["onnxruntime"]  # the board's onnxruntime
    assert c["runtime"] == "c" and c["c"]["static_link"]  # a board's libc may be older
    assert board.leftovers() == []  # the folder on the board is gone


def test_validate_on_user_at_host_port(board, validated, tmp_path):
    """USER@HOST:PORT (the config gives the key and the known host for 127.0.0.1)."""
    target = str(validated["run_dir"] / "fast-c.toml")
    r = run_cli("validate", validated["onnx"], "--reference", validated["reference"],
                "--target", target, "--out", tmp_path, "--json",
                *board.args(f"{board.user}@127.0.0.1:{board.port}"))
    assert r.returncode == 0, r.stderr[-3000:]
    e = json.loads((Path(json.loads(r.stdout)["path"]) / "report.json").read_text())["targets"][0]
    assert e["mode"] == "remote" and e["parity"]["agreement"] == 1.0


def test_verify_on_the_board_applies_its_budgets(board, validated):
    args = [validated["bundle"], "--rebuild-c", "--json", *board.args()]
    r = run_cli("verify", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {x["target"]: x for x in json.loads(r.stdout)["runs"]}
    assert set(runs) == set(PROFILES)
    for x in runs.values():
        assert x["mode"] == "remote" and x["agreement"] == 1.0 and x["passed"], x
        assert [g["status"] for g in x["gates"]] == ["pass", "pass"], x["gates"]
    # a budget no board meets: exit 1 with both numbers
    r = run_cli("verify", *args, "--latency-budget-ms", "0.000001")
    assert r.returncode == 1, r.stderr[-2000:]
    result = json.loads(r.stdout)
    for x in result["runs"]:
        g = next(g for g in x["gates"] if g["gate"] == "latency")
        assert g["status"] == "fail" and "> budget 1e-06 ms" in g["detail"], g
    assert board.leftovers() == []


def _dropping_python(root: Path) -> Path:
    """A 'python' that answers the check (-c) and then kills its ssh session: the connection
    drops in the middle of the run."""
    script = root / "dropping-python"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n'
                      'kill -9 $PPID\nsleep 5\n')
    script.chmod(0o755)
    return script


def _bare_python(root: Path) -> Path:
    """A Python without site-packages: no numpy, no onnxruntime."""
    script = root / "bare-python"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("case, target, words", [
    ("unreachable", "fast-c", ("ssh failed", "Connection refused")),
    ("refused key", "fast-ort", ("ssh failed", "Permission denied")),
    ("no onnxruntime", "fast-ort", ("cannot import numpy and onnxruntime", "--remote-python")),
    ("dropped connection", "fast-ort", ("ssh failed", "closed")),
])
def test_a_failing_board_exits_2_with_one_line_and_stores_nothing(board, validated, tmp_path,
                                                                  case, target, words):
    args = {"unreachable": board.args(f"{board.user}@127.0.0.1:{_free_port()}"),
            "refused key": board.args("stranger"),
            "no onnxruntime": board.args(python=str(_bare_python(board.root))),
            "dropped connection": board.args(python=str(_dropping_python(board.root)))}[case]
    out = tmp_path / "runs"
    t0 = time.monotonic()
    r = run_cli("validate", validated["onnx"], "--reference", validated["reference"],
                "--target", validated["run_dir"] / f"{target}.toml", "--out", out, *args)
    line = one_line_exit_2(r, *words)
    assert "board" in line or "127.0.0.1" in line, line
    assert time.monotonic() - t0 < 120
    assert not any(out.glob("validate-*")), list(out.iterdir())  # nothing half-written
    assert board.leftovers() == []
    if case in ("unreachable", "refused key"):
        r = run_cli("verify", validated["bundle"], *args)
        # verify reports its checksums first (progress), then the one error line
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("edgeprune: error")]
        assert len(errors) == 1 and all(w in errors[0] for w in words), r.stderr[-2000:]


def test_a_destination_that_could_be_an_option_is_refused(validated, tmp_path):
    r = run_cli("validate", validated["onnx"], "--reference", validated["reference"],
                "--target", validated["run_dir"] / "fast-ort.toml", "--out", tmp_path,
                "--remote", "-oProxyCommand=touch pwned")
    one_line_exit_2(r, "is not USER@HOST[:PORT]")
    assert not (Path.cwd() / "pwned").exists()

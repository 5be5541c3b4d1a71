import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeprune  # noqa: F401  (quiets Norse's import warnings)
from edgeprune import data_sources
from targets import tools

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=600, env_extra=None):
    """Run the installed CLI as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})})


def one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> str:
    """The line a refused command printed: exit 2, one line, no traceback, naming `words`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# Skip markers for optional tools and data, from the lookups the runtime and `edgeprune doctor`
# use; an EDGEPRUNE_REQUIRE_* variable set to 1 makes the need mandatory (the test runs, and fails).
def assert_compress_parity(out: dict) -> None:
    """`compress --json` output on ONNX Runtime and the C runtime: ORT runs PyTorch's float
    operations (logits within 1e-4); the C runtime sums in its own order, so a potential within
    rounding of the threshold may flip a spike: same class everywhere, logits within tolerance
    on nearly all inputs."""
    import json

    assert out["summary"]["validation"]["agreement"] == 1.0
    report = json.loads((Path(out["artifacts"]["validation"]) / "report.json").read_text())
    parity = {t["target"]: t["parity"] for t in report["targets"]}
    assert parity["x86_64"]["max_abs_diff"] < 1e-4, parity
    assert all(p["agreement"] == 1.0 and p["within_tolerance"] >= 0.98
               for p in parity.values()), parity


def _requirement(present: bool, env: str, reason: str):
    return pytest.mark.skipif(not present and os.environ.get(env) != "1", reason=reason)


HAVE_QEMU = tools.QEMU.find() is not None
requires_cc = _requirement(tools.CC.find() is not None, "EDGEPRUNE_REQUIRE_CC",
                           f"no C compiler installed (apt-get install {tools.CC.package})")
requires_qemu = _requirement(HAVE_QEMU, "EDGEPRUNE_REQUIRE_ARM64",
                             "qemu-aarch64-static is not installed "
                             f"(apt-get install {tools.QEMU.package})")
requires_cross_cc = _requirement(tools.CROSS_CC.find() is not None and HAVE_QEMU,
                                 "EDGEPRUNE_REQUIRE_ARM64",
                                 f"{tools.CROSS_CC.package} and {tools.QEMU.package} are not "
                                 "installed")
requires_mcu = _requirement(tools.MCU_CC.find() is not None
                            and tools.QEMU_SYSTEM.find() is not None, "EDGEPRUNE_REQUIRE_MCU",
                            f"{tools.MCU_CC.package} and {tools.QEMU_SYSTEM.package} are not "
                            "installed")
# sshd is started by the tests as a board on 127.0.0.1 (tests/test_remote.py)
requires_ssh = _requirement(tools.SSHD.find() is not None and tools.SSH.find() is not None,
                            "EDGEPRUNE_REQUIRE_SSH", "sshd is not installed (apt-get install "
                            f"{tools.SSHD.package} {tools.SSH.package})")
requires_fashion = _requirement(data_sources.fashion_available(), "EDGEPRUNE_REQUIRE_FASHION",
                                "Debian's dataset-fashion-mnist is not installed")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# The other SNN frameworks (optional test dependencies; .ci/run installs them, see README)
FRAMEWORK_PINS = {"spikingjelly": "spikingjelly==2.0.0", "sinabs": "sinabs==3.1.3",
                  "rockpool": "rockpool==3.1.0"}
requires_framework = {
    name: _requirement(_importable(name), "EDGEPRUNE_REQUIRE_FRAMEWORKS",
                       f"{name} is not installed (pip install --no-deps '{pin}')")
    for name, pin in FRAMEWORK_PINS.items()}


def available(requirement) -> bool:
    """Whether a requires_* marker lets its tests run (the tool is there, or it is mandatory)."""
    return not requirement.mark.args[0]


def skip_unless(requirement) -> None:
    """A requires_* marker applied inside a fixture or helper, where marks do not reach."""
    if not available(requirement):
        pytest.skip(requirement.mark.kwargs["reason"])


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    """A dense convnet trained on digits through the real train stage (shared by tests)."""
    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import DataConfig, ModelConfig, TrainConfig

    store = Store(tmp_path_factory.mktemp("runs"))
    # width 1: the tests check mechanics on the small net (the default on digits is width 2)
    art, _ = pipeline.train(store, DataConfig("digits"), ModelConfig(width=1.0),
                            TrainConfig(epochs=12))
    return art


def small_dense(root: Path, epochs: int):
    """A small dense digits convnet (400 images, width 0.5, T=4) trained through the real train
    stage, in a store at `root`: (store, model input, data config, dataset)."""
    import pipeline
    from edgeprune import stage_inputs
    from edgeprune.artifacts import Store
    from edgeprune.config import DataConfig, ModelConfig, TrainConfig

    store = Store(root)
    art, _ = pipeline.train(store, DataConfig("digits", 400), ModelConfig(width=0.5, timesteps=4),
                            TrainConfig(epochs=epochs))
    dense = stage_inputs.open_model(art.path)
    cfg, ds = stage_inputs.dataset_for(dense, DataConfig())
    return store, dense, cfg, ds


def small_ticket(run_dir: Path, digits_model):
    """A 50% imp ticket of `digits_model` (copied into `run_dir`: the lineage needs it there),
    retrained two epochs and exported through the real stages; (store, export, ticket)."""
    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import ImpSettings, RetrainConfig, SearchConfig

    store = Store(run_dir)
    shutil.copytree(digits_model.path, run_dir / digits_model.path.name)
    dense = run_dir / digits_model.path.name / "model.pt"
    mask, _ = pipeline.search(store, dense, SearchConfig(method="imp", sparsity=0.5,
                                                         imp=ImpSettings(0.5)))
    ticket, _ = pipeline.retrain(store, dense, mask.path, RetrainConfig(epochs=2))
    export, _ = pipeline.export(store, ticket.path / "model.pt")
    return store, export, ticket


def _version(pkg: str) -> str:
    from importlib import metadata

    return metadata.version(pkg)


@pytest.fixture(scope="session")
def torchless_python(tmp_path_factory):
    """A venv with only requirements-device.txt (what the README's device install has, numpy
    and onnxruntime at this venv's versions), cached beside pytest's temporary directories
    under a name that changes with the requirements, so later sessions reuse it."""
    pins = [f"onnxruntime=={_version('onnxruntime')}", f"numpy=={_version('numpy')}"]
    reqs = ROOT / "requirements-device.txt"
    key = hashlib.sha256(reqs.read_bytes() + " ".join(pins).encode()).hexdigest()[:12]
    venv = tmp_path_factory.getbasetemp().parent / f"edgeprune-device-venv-{key}"
    py = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(reqs), *pins], check=True, timeout=300, capture_output=True)
        (venv / ".complete").touch()
    return py

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edgeprune  # noqa: F401  (quiets Norse's import warnings)
from edgeprune.data import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=600):
    """Run the installed CLI as a user would; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def fashion_available() -> bool:
    return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()


requires_fashion = pytest.mark.skipif(
    not fashion_available() and os.environ.get("EDGEPRUNE_REQUIRE_FASHION") != "1",
    reason="Debian's dataset-fashion-mnist is not installed")


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

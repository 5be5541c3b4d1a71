"""Where the built-in datasets are looked for. Torch-free: edgeprune.data loads from these
places, and `edgeprune doctor` and the tests' skip markers check the same ones."""
from __future__ import annotations

from importlib import util
from pathlib import Path

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_idx(directory: Path, stem: str) -> Path | None:
    """An IDX file as gz or raw, under either naming the mirrors use; None when absent."""
    for candidate in (directory / f"{stem}.gz", directory / stem,
                      directory / f"{stem.replace('-idx', '.idx')}.gz"):
        if candidate.exists():
            return candidate
    return None


def digits_file() -> Path:
    """The digits scikit-learn ships in its wheel (found without importing scikit-learn)."""
    spec = util.find_spec("sklearn")
    base = Path(next(iter(spec.submodule_search_locations))) if spec else Path("sklearn")
    return base / "datasets" / "data" / "digits.csv.gz"


def builtin() -> list[dict]:
    """Each built-in dataset: name, found (None: it has no default place), where it was
    looked for, and what installs it."""
    digits = digits_file()
    return [
        {"name": "digits", "found": digits.is_file(), "where": str(digits),
         "install": "pip install scikit-learn"},
        {"name": "fashion-mnist", "found": fashion_available(), "where": str(FASHION_MNIST_DIR),
         "install": "apt-get install dataset-fashion-mnist (or --data fashion-mnist:DIR)"},
        {"name": "cifar10", "found": None, "where": "no default place",
         "install": "--data cifar10:DIR (its python batches)"},
    ]


def fashion_available() -> bool:
    return all(find_idx(FASHION_MNIST_DIR, s) for s in FASHION_STEMS)

"""Datasets as in-memory tensors: images scaled to [0, 1], shape (N, C, H, W), int64 labels.

Nothing is downloaded: `digits` ships inside scikit-learn, Fashion-MNIST comes from a directory
of IDX files (by default where Debian's `dataset-fashion-mnist` puts them), CIFAR-10 from its
python batches, and anything else from an `.npz` file.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .bounded_read import GiB, Budget, npz_arrays, open_regular, read_exact, shown, size_text
from .data_sources import FASHION_MNIST_DIR, find_idx
from .errors import UserError
from .hashing import arrays_digest

FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]
DIGITS_SPLIT_SEED = 0  # the digits train/test split is fixed, whatever the training seed
VAL_SPLIT_SEED = 0  # the validation split is fixed too, whatever the training seed
# What reading one dataset (all its files) may cost, as stored and decompressed: CIFAR-10 is
# 180 MiB and 184M numbers, Fashion-MNIST 52 MiB. The numbers become float32 (2 GiB at the cap).
DATASET_BYTES = 2 * GiB
DATASET_NUMBERS = 1 << 29


def _budget() -> Budget:
    return Budget("a dataset", DATASET_BYTES, DATASET_NUMBERS)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    # Held out of the training images for model selection (best checkpoint, defaults); the test
    # set is only for reporting. None when no validation split was asked for.
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images (the model's input normalization)."""
        mean = self.x_train.mean(dim=(0, 2, 3))
        std = self.x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return mean.tolist(), std.tolist()

    def subset(self, n: int | None, seed: int) -> "Dataset":
        """A seeded random subset of `n` training images (the test set is kept whole)."""
        if n is None or n >= len(self.y_train):
            return self
        if n < 1:
            raise UserError(f"--train-subset must be at least 1, got {n}")
        idx = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(seed))[:n]
        return replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx])

    def test_subset(self, n: int | None, seed: int = 1) -> "Dataset":
        """A seeded random subset of `n` test images (the training set is kept whole)."""
        if n is None or n >= len(self.y_test):
            return self
        idx = torch.randperm(len(self.y_test), generator=torch.Generator().manual_seed(seed))[:n]
        return replace(self, x_test=self.x_test[idx], y_test=self.y_test[idx])

    def split_validation(self, fraction: float, seed: int = VAL_SPLIT_SEED) -> "Dataset":
        """Move a fixed, stratified `fraction` of the training images (round(fraction * n_c) of
        each class c, drawn with a generator seeded by `seed`, not by the training seed) into a
        validation set. The images left for training keep their order."""
        if fraction == 0.0:
            return self
        if self.x_val is not None:
            raise UserError("this dataset already has a validation split")
        g = torch.Generator().manual_seed(seed)
        val = torch.zeros(len(self.y_train), dtype=torch.bool)
        for c in torch.unique(self.y_train):
            members = torch.nonzero(self.y_train == c).flatten()
            k = int(round(fraction * len(members)))
            val[members[torch.randperm(len(members), generator=g)[:k]]] = True
        if not val.any() or val.all():
            raise UserError(f"validation fraction {fraction} leaves no validation or no "
                            f"training images out of {len(self.y_train)}")
        return replace(self, x_train=self.x_train[~val], y_train=self.y_train[~val],
                       x_val=self.x_train[val], y_val=self.y_train[val])


def load(name_or_path: str) -> Dataset:
    """Load a dataset by name (`digits`, `fashion-mnist[:DIR]`, `cifar10:DIR`) or path (a .npz
    file, or a directory of CIFAR batches or IDX files)."""
    name, _, where = name_or_path.partition(":")
    if name in DATASETS:
        return DATASETS[name](where)
    path = Path(name_or_path)
    if path.suffix == ".npz":
        return _npz(path)
    if path.is_dir():
        return _cifar10(path) if (path / "data_batch_1").exists() else _fashion_mnist(path)
    raise UserError(f"unknown dataset {name_or_path!r}: use digits, fashion-mnist[:DIR], "
                    "cifar10:DIR, a directory of IDX or CIFAR files, or a .npz file")


def _as_dataset(source, name, x_train, y_train, x_test, y_test, class_names) -> Dataset:
    """The one door every loader goes through: the arrays are checked here, so no kind of
    dataset can hand training a NaN pixel, a fractional label or an empty split."""
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    labels = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_images(source, f"x_{split}", x)
        labels[split] = _check_labels(source, f"y_{split}", y, len(x), len(class_names))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{source}: x_train images are {list(x_train.shape[1:])} but x_test "
                        f"images are {list(x_test.shape[1:])}")
    unseen = np.setdiff1d(labels["test"], labels["train"])
    if unseen.size:
        first = int(np.flatnonzero(np.isin(labels["test"], unseen))[0])
        raise UserError(f"{source}: y_test[{first}] is class {int(labels['test'][first])}, which "
                        "the training set never shows (a model cannot learn it)")
    return Dataset(name, torch.as_tensor(np.ascontiguousarray(x_train), dtype=torch.float32),
                   torch.as_tensor(labels["train"]),
                   torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32),
                   torch.as_tensor(labels["test"]), class_names)


def _check_images(source, key: str, x: np.ndarray) -> None:
    if x.ndim != 4 or min(x.shape[1:], default=0) < 1:
        raise UserError(f"{source}: {key} must hold images (N, C, H, W), got shape "
                        f"{list(x.shape)}")
    if len(x) == 0:
        raise UserError(f"{source}: {key} is empty")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise UserError(f"{source}: {key}[{int(np.flatnonzero(bad)[0])}] holds a NaN or infinite "
                        "pixel")


def _check_labels(source, key: str, y: np.ndarray, n: int, classes: int) -> np.ndarray:
    """Labels as int64, or a UserError naming the first bad one."""
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise UserError(f"{source}: {key} must be a 1-d array of integer labels, got "
                        f"{y.dtype} of shape {list(y.shape)}")
    if len(y) != n:
        raise UserError(f"{source}: {n} images but {len(y)} labels in {key}")
    as_int = np.zeros(len(y), np.int64)
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y)) & (np.abs(y) < 2**31)
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            raise UserError(f"{source}: {key}[{i}] is {y[i].item()!r}, not an integer class "
                            "label")
    as_int[:] = y
    bad = (as_int < 0) | (as_int >= classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{source}: {key}[{i}] is {as_int[i]}, outside the {classes} classes "
                        f"0..{classes - 1}")
    return as_int


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, stratify=d.target,
                                              random_state=DIGITS_SPLIT_SEED)
    return _as_dataset("digits", "digits", x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)])


# -- Fashion-MNIST (IDX) ---------------------------------------------------------------------

def _find_idx(directory: Path, stem: str) -> Path:
    found = find_idx(directory, stem)
    if found:
        return found
    raise UserError(f"Fashion-MNIST file {stem}[.gz] not found in {directory} "
                    "(install Debian's dataset-fashion-mnist or pass --data fashion-mnist:DIR)")


def read_idx(path: Path, budget: Budget | None = None) -> np.ndarray:
    """Parse an IDX file (raw or gzip) into a uint8 array. The header's dims are checked against
    `budget` before the data is read, and gzip is streamed: no more than the header declares
    (plus one byte, to see that nothing follows) is ever decompressed."""
    budget = budget or _budget()
    with open_regular(path, "IDX file") as f:
        try:
            stream = gzip.GzipFile(fileobj=f) if path.suffix == ".gz" else f
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
            raw_dims = stream.read(4 * head[3])
            if len(raw_dims) < 4 * head[3]:
                raise UserError(f"{path} is truncated (header cut short)")
            dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(head[3])]
            count = math.prod(dims)
            budget.take(f"IDX file {path}", count, count)
            body = read_exact(stream, count, f"IDX file {path}")
            if stream.read(1):
                raise UserError(f"{path} holds more than the {4 + 4 * len(dims) + count} bytes "
                                "its header says: the file is corrupted")
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise UserError(f"cannot read IDX file {path}: {e}") from None
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _fashion_mnist(directory: Path) -> Dataset:
    if not directory.is_dir():
        raise UserError(f"Fashion-MNIST directory {directory} does not exist (install Debian's "
                        "dataset-fashion-mnist or pass --data fashion-mnist:DIR)")
    budget = _budget()  # one for the four files
    parts = {k: read_idx(_find_idx(directory, f"{k}-idx{n}-ubyte"), budget)
             for k, n in (("train-images", 3), ("train-labels", 1),
                          ("t10k-images", 3), ("t10k-labels", 1))}
    for split in ("train", "t10k"):
        if len(parts[f"{split}-images"]) != len(parts[f"{split}-labels"]):
            raise UserError(f"{directory}: {split} images and labels differ in count")
    return _as_dataset(directory, "fashion-mnist",
                       parts["train-images"][:, None] / np.float32(255), parts["train-labels"],
                       parts["t10k-images"][:, None] / np.float32(255), parts["t10k-labels"],
                       FASHION_CLASSES)


# -- CIFAR-10 (python batches, read without running pickled code) ----------------------------

def _numeric_dtype(*args) -> np.dtype:
    """numpy.dtype, for numbers only: an array of Python objects from a pickle could run code
    or crash numpy itself (an object array whose pickled list is too short)."""
    dt = np.dtype(*args)
    if dt.kind not in "biuf" or dt.names is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"refusing a numpy array of {dt}: a CIFAR-10 batch holds "
                                     "only numbers")
    return dt


def _latin1(text, encoding="utf-8"):
    """_codecs.encode as pickles of bytes use it (latin1), and no other codec."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing to encode with {shown(str(encoding))}")
    return text.encode("latin1")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numeric numpy arrays, each no larger than the file
    itself: a CIFAR batch needs nothing more. A file that asks for anything else (code, object
    arrays, a size it does not hold) is refused instead of run or allocated."""

    def __init__(self, f, limit: int):
        super().__init__(f, encoding="bytes")
        self.limit = limit
        self.constructors = {("numpy.core.multiarray", "_reconstruct"): self._array,
                             ("numpy._core.multiarray", "_reconstruct"): self._array,
                             ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _numeric_dtype,
                             ("builtins", "bytes"): self._bytes,
                             ("__builtin__", "bytes"): self._bytes,  # protocol 2's name for it
                             ("_codecs", "encode"): _latin1}

    def find_class(self, module, name):
        if (module, name) in self.constructors:
            return self.constructors[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {shown(f'{module}.{name}')}")

    def _fits(self, nbytes: int) -> None:
        if nbytes > self.limit:
            raise pickle.UnpicklingError(f"it declares {size_text(nbytes)} in a file of "
                                         f"{size_text(self.limit)}: refused")

    def _array(self, subtype, shape, dtype) -> np.ndarray:
        if subtype is not np.ndarray or not isinstance(shape, tuple) or \
                not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError("refusing an array that is not a plain numpy array")
        dt = _numeric_dtype(dtype)
        self._fits(math.prod(shape) * dt.itemsize)
        return np.ndarray(shape, dt)

    def _bytes(self, *args) -> bytes:
        if args and isinstance(args[0], int):  # bytes(n) is n zeros
            self._fits(args[0])
        return bytes(*args)


def _cifar_batch(path: Path, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise UserError(f"CIFAR-10 batch {path} not found")
    try:
        with open_regular(path, "CIFAR-10 batch") as f:
            size = os.fstat(f.fileno()).st_size
            budget.take(f"CIFAR-10 batch {path}", size)
            d = _PlainUnpickler(f, size).load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except UserError:  # not a regular file, or over the budget
        raise
    except MemoryError:  # a size declared in the pickle's own opcodes
        raise UserError(f"{path} is not a CIFAR-10 python batch: it declares more memory "
                        "than there is") from None
    except Exception as e:  # a malformed batch can fail in many ways; all mean the same
        raise UserError(f"{path} is not a CIFAR-10 python batch: "
                        f"{' '.join(str(e).split())[:160]}") from None
    budget.take(f"CIFAR-10 batch {path}", 0, data.size)
    if len(data) != len(labels):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar10(directory: Path) -> Dataset:
    if not directory.is_dir():
        raise UserError(f"CIFAR-10 directory {directory} does not exist")
    budget = _budget()  # one for the six files
    train = [_cifar_batch(directory / f"data_batch_{i}", budget) for i in range(1, 6)
             if (directory / f"data_batch_{i}").exists()]
    if not train:
        raise UserError(f"no CIFAR-10 data_batch_N files in {directory}")
    x_te, y_te = _cifar_batch(directory / "test_batch", budget)
    x_tr = np.concatenate([b[0] for b in train])
    y_tr = np.concatenate([b[1] for b in train])
    return _as_dataset(directory, "cifar10", x_tr / np.float32(255), y_tr,
                       x_te / np.float32(255), y_te,
                       CIFAR_CLASSES)


# -- .npz ------------------------------------------------------------------------------------

def _to_nchw(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise UserError(f"{path}: {key} must hold numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise UserError(f"{path}: {key} must be images (N,H,W), (N,C,H,W) or (N,H,W,C), "
                        f"got shape {x.shape}")
    x = x.astype(np.float32)
    if np.nanmax(x, initial=0) > 1.0:  # uint8-style pixels
        x = x / 255.0
    return x


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz(path: Path) -> Dataset:
    arrays = npz_arrays(path, "dataset file", NPZ_KEYS + ("class_names",), _budget())
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} (needs x_train, y_train, x_test, y_test)")
    x_tr = _to_nchw(arrays["x_train"], path, "x_train")
    x_te = _to_nchw(arrays["x_test"], path, "x_test")
    y_tr, y_te = arrays["y_train"], arrays["y_test"]
    if "class_names" in arrays:
        names = [str(n) for n in np.atleast_1d(arrays["class_names"]).tolist()]
    else:  # as many classes as the largest label says (labels are checked below)
        top = max((np.nanmax(y, initial=0) for y in (y_tr, y_te)
                   if y.dtype.kind in "biuf" and y.size), default=0)
        names = [str(i) for i in range(int(min(max(top, 0), 1e6)) + 1)]
    return _as_dataset(path, path.stem, x_tr, y_tr, x_te, y_te, names)


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to `pad` pixels (and horizontal flips), drawn from `generator` (a CPU
    generator: the same draws on every device); the indexing runs where `x` lives."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None]).clamp_max(h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w, device=dev)[None])
    out = padded[torch.arange(n, device=dev)[:, None, None, None],
                 torch.arange(c, device=dev)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(dev)
        out[mask] = out[mask].flip(-1)
    return out


def fingerprint(d: Dataset) -> str:
    """A content hash of the data, so an artifact id changes when a user's files change (a
    validation split counts only when there is one)."""
    return arrays_digest(d.x_train, d.y_train, d.x_test, d.y_test, d.x_val, d.y_val)


def _cifar10_named(where: str) -> Dataset:
    if not where:
        raise UserError("cifar10 needs its directory: --data cifar10:/path/to/cifar-10-batches-py")
    return _cifar10(Path(where))


# name -> loader of its directory part (`fashion-mnist:DIR`); "" when none was given
DATASETS = {
    "digits": lambda where: _digits(),
    "fashion-mnist": lambda where: _fashion_mnist(Path(where) if where else FASHION_MNIST_DIR),
    "cifar10": _cifar10_named,
}
DATASETS.update({"fashion_mnist": DATASETS["fashion-mnist"], "fmnist": DATASETS["fashion-mnist"],
                 "cifar-10": DATASETS["cifar10"]})

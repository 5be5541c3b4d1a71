import gzip
import pickle

import numpy as np
import pytest
import torch

from edgeprune import data
from edgeprune.errors import UserError

from .conftest import requires_fashion


def test_digits_split_is_fixed_and_scaled():
    a, b = data.load("digits"), data.load("digits")
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert a.num_classes == 10 and set(a.y_test.tolist()) == set(range(10))


def test_subset_is_seeded_and_keeps_test_set():
    d = data.load("digits")
    s1, s2 = d.subset(100, seed=3), d.subset(100, seed=3)
    assert len(s1.y_train) == 100 and torch.equal(s1.y_train, s2.y_train)
    assert not torch.equal(s1.x_train, d.subset(100, seed=4).x_train)
    assert torch.equal(s1.x_test, d.x_test)


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (20, 28, 28)), gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 20), gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (5, 28, 28)), gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", rng.integers(0, 10, 5), gz)
    d = data.load(f"fashion-mnist:{tmp_path}")
    assert d.x_train.shape == (20, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)


def test_truncated_idx_names_the_file(tmp_path):
    _write_idx(tmp_path / "x.idx", np.zeros((4, 3, 3)), gz=False)
    p = tmp_path / "x.idx"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(UserError, match="x.idx.*truncated"):
        data.read_idx(p)


def test_missing_fashion_dir_names_path(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        data.load(f"fashion-mnist:{tmp_path / 'nope'}")


@requires_fashion
def test_real_fashion_mnist():
    d = data.load("fashion-mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.class_names[9] == "ankle-boot" and int(d.y_train.max()) == 9


def _cifar_dir(tmp_path, n=10):
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.permutation(np.arange(n) % 10).tolist()}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    return tmp_path


def test_cifar_batches(tmp_path):
    d = data.load(f"cifar10:{_cifar_dir(tmp_path)}")
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.class_names[0] == "airplane"


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/edgeprune-pwned", "w"))


def test_cifar_batch_with_code_is_refused(tmp_path):
    _cifar_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        data.load(f"cifar10:{tmp_path}")


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    shape = {"nhw": (30, 12, 12), "nchw": (30, 3, 12, 12), "nhwc": (30, 12, 12, 3)}[layout]
    x = rng.integers(0, 256, shape).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=rng.integers(0, 4, 30),
             x_test=x[:6], y_test=rng.integers(0, 4, 6))
    d = data.load(str(tmp_path / "d.npz"))
    assert d.x_train.shape[0] == 30 and d.x_train.shape[2:] == (12, 12)
    assert d.x_train.shape[1] == (1 if layout == "nhw" else 3)
    assert float(d.x_train.max()) <= 1.0


def test_npz_missing_key(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2))
    with pytest.raises(UserError, match="lacks x_test, y_test"):
        data.load(str(tmp_path / "d.npz"))


def test_augment_shifts_within_bounds():
    x = torch.rand(8, 1, 8, 8)
    y = data.augment(x, torch.Generator().manual_seed(0), flip=False)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_validation_split_is_fixed_stratified_and_disjoint():
    from edgeprune import stage_inputs
    from edgeprune.config import DataConfig

    full = data.load("digits")
    d = stage_inputs.load_data(DataConfig("digits", val_fraction=0.1))
    assert len(d.y_train) + len(d.y_val) == len(full.y_train)
    assert torch.equal(d.x_test, full.x_test)  # the test set is untouched
    for c in range(10):  # round(10%) of every class
        n_c = int((full.y_train == c).sum())
        assert int((d.y_val == c).sum()) == round(0.1 * n_c)

    def rows(x, y):
        return sorted((int(c), tuple(v.flatten().tolist())) for v, c in zip(x, y))

    # train + validation is the original training set, each image exactly once
    assert rows(torch.cat([d.x_train, d.x_val]), torch.cat([d.y_train, d.y_val])) == \
        rows(full.x_train, full.y_train)
    again = stage_inputs.load_data(DataConfig("digits", val_fraction=0.1))
    assert torch.equal(again.x_val, d.x_val) and torch.equal(again.y_train, d.y_train)
    assert stage_inputs.load_data(DataConfig("digits")).x_val is None
    assert data.fingerprint(stage_inputs.load_data(DataConfig("digits"))) == data.fingerprint(full)
    assert data.fingerprint(d) != data.fingerprint(full)


def test_cifar10_path_runs_the_papers_vgg16_end_to_end(tmp_path, capsys):
    """The CIFAR-10 reproduction path (benchmarks/README.md) on CIFAR-format batches: VGG16
    trains, a ticket is searched, retrained, exported and validated."""
    import json

    import cli

    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 40), ("test_batch", 20)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": (np.arange(n) % 10).tolist()}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    capsys.readouterr()
    rc = cli.run(["compress", "--data", f"cifar10:{tmp_path}", "--arch", "vgg16", "--width",
                  "0.125", "-T", "2", "--epochs", "1", "--method", "imp", "--sparsity", "0.5",
                  "--prune-rate", "0.5", "--retrain-epochs", "1", "--batch-size", "20",
                  "--latency-budget-ms", "10000", "--max-accuracy-drop", "100",
                  "--out", str(tmp_path / "runs"), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    s = json.loads(out.out)["summary"]
    assert s["sparsity"] == pytest.approx(0.5, abs=1e-3) and s["passed"]

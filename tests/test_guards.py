"""Never ship a broken model quietly: degenerate data, diverging training and degenerate tickets
stop with one line and exit 2 before anything broken is stored."""
import re

import numpy as np
import pytest
import torch

import cli
from edgeprune import masks, pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ModelConfig, TrainConfig
from edgeprune.errors import UserError
from edgeprune.models import ModelSpec, prunable


def _npz(path, **override):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.random((30, 8, 8)), y_train=np.arange(30) % 3,
                  x_test=rng.random((6, 8, 8)), y_test=np.arange(6) % 3)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def _cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.run([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case, override, words", [
    ("nan", {"x_train": np.where(np.arange(30 * 64).reshape(30, 8, 8) == 1000, np.nan, 0.5)},
     ["x_train[15]", "NaN"]),
    ("float-label", {"y_train": np.r_[np.arange(29) % 3, 1.5]}, ["y_train[29]", "1.5"]),
    ("empty", {"x_train": np.zeros((0, 8, 8)), "y_train": np.zeros(0)}, ["x_train is empty"]),
    ("all-empty", {k: np.zeros((0, 8, 8) if k[0] == "x" else 0)
                   for k in ("x_train", "y_train", "x_test", "y_test")}, ["is empty"]),
    ("unseen-class", {"y_test": np.array([0, 1, 2, 0, 1, 3])}, ["y_test[5]", "never shows"]),
    ("negative", {"y_train": -(np.arange(30) % 3)}, ["y_train[1]", "outside"]),
])
def test_bad_data_exits_2_naming_file_array_and_index(tmp_path, capsys, case, override, words):
    path = _npz(tmp_path / f"{case}.npz", **override)
    out = tmp_path / "runs"
    rc, err = _cli(capsys, "train", "--data", path, "--epochs", "1", "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and all(w in err for w in words), err
    assert not out.exists()


def test_images_of_the_wrong_shape_for_the_model_are_refused(tmp_path, capsys, digits_model):
    path = _npz(tmp_path / "big.npz", x_train=np.random.rand(30, 16, 16),
                x_test=np.random.rand(6, 16, 16))
    rc, err = _cli(capsys, "search", digits_model.path / "model.pt", "--data", path,
                   "--out", tmp_path / "runs")
    assert rc == 2 and "[1, 16, 16]" in err and "[1, 8, 8]" in err, err


def test_diverging_training_stops_and_stores_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(UserError, match=r"training diverged: .* at epoch 1, step \d+") as e:
        pipeline.train(store, DataConfig("digits", 200), ModelConfig(width=0.5, timesteps=2),
                       TrainConfig(epochs=2, lr=1e30))
    assert "\n" not in str(e.value)
    assert store.artifacts() == [] and not list(tmp_path.glob("train-*"))


def test_a_layer_left_without_weights_names_the_layer_and_the_limit():
    torch.manual_seed(0)
    model = ModelSpec().build()
    w = {n: p.detach() for n, p in prunable(model).items()}
    with pytest.raises(UserError, match=r"would leave layer \S+ with no weight") as e:
        masks.prune(w, 0.999, "global")
    limit = float(str(e.value).rsplit(" ", 1)[1])
    kept = masks.prune(w, limit, "global")  # the named limit itself still keeps every layer
    assert all(m.any() for m in kept.values())


def test_a_mask_with_no_path_from_input_to_output_is_found():
    torch.manual_seed(0)
    model = ModelSpec().build()
    m = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model).items()}
    first, second = list(m)[:2]
    m[first][:] = False
    m[first][3] = True  # conv1 keeps only output channel 3 ...
    m[second][:] = False
    m[second][:, 5] = True  # ... and conv2 reads only channel 5: nothing gets through
    assert masks.disconnected(model, m, (1, 8, 8)) == second
    m[second][:, 3] = True
    assert masks.disconnected(model, m, (1, 8, 8)) is None


def test_compress_at_a_sparsity_that_kills_the_network_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs"
    rc, err = _cli(capsys, "compress", "--data", "digits", "--sparsity", "0.99999", "--method",
                   "imp", "--out", out)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"keeps \d of [\d,]+ weights, fewer than the 4 prunable layers", err), err
    assert "at most 0.9999" in err, err
    assert not out.exists()  # not even the dense model was trained


def test_search_refuses_a_dead_layer_on_the_trained_weights_before_any_work(tmp_path, capsys,
                                                                             digits_model):
    out = tmp_path / "runs"
    rc, err = _cli(capsys, "search", digits_model.path / "model.pt", "--sparsity", "0.9995",
                   "--method", "imp", "--scope", "global", "--out", out)
    assert rc == 2 and "with no weight" in err and "largest sparsity" in err, err
    assert not out.exists() or not list(out.glob("*-*"))


def test_sparsity_is_never_shown_as_a_round_100_percent():
    from commands.render import pct

    assert pct(1 - 1e-6) == "99.9999%" and pct(0.97) == "97.00%" and pct(1.0) == "100.00%"

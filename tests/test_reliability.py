"""Resume after SIGKILL, integrity on every load, safe loading, and one clear line for bad input."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings, strategies as st

from edgeprune import recipe, tensorfile
from edgeprune.artifacts import Store, open_artifact
from edgeprune.errors import UserError

from .conftest import ROOT, run_cli

CHAIN = ["compress", "--data", "digits", "--width", "1", "--train-subset", "256", "--epochs", "3",
         "--method",
         "imp", "--sparsity", "0.6", "--round-epochs", "2", "--retrain-epochs", "2",
         "--batch-size", "64", "--json",
         # latency is gated in test_targets; here a loaded machine must not fail the chain
         "--latency-budget-ms", "10000"]


def _chain(out, crash_at=None):
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRUNE_CRASH_AT"}
    if crash_at:
        env["EDGEPRUNE_CRASH_AT"] = crash_at
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "cli", *CHAIN, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)


def _final(out):
    res = json.loads(_chain(out).stdout)
    model = torch.load(res["artifacts"]["ticket"], weights_only=True)["state_dict"]
    mask = tensorfile.load(open_artifact(res["artifacts"]["mask"]).file("mask.safetensors"))
    return res, model, mask


def test_sigkill_at_many_points_then_resume_is_bit_identical(tmp_path):
    ref, ref_model, ref_mask = _final(tmp_path / "ref")
    out = tmp_path / "killed"
    # Each run dies at the given point (counted from its own start), the next one resumes from
    # what was saved and dies later: the dense run mid-epoch 2, mid-write of its epoch-3
    # checkpoint, IMP round 1 mid-epoch 2, mid-write of round 2's artifact, the retraining
    # mid-epoch 1, mid-write of its epoch-2 checkpoint, mid-write of the export artifact.
    points = ["step:5", "checkpoint-write:2", "step:9", "artifact-write:2", "step:12",
              "checkpoint-write:2", "artifact-write:2"]
    for point in points:
        r = _chain(out, point)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr[-500:])
        # whatever was cut short lies under a temporary name; every visible folder is complete
        assert all((p / "manifest.json").exists() for p in out.iterdir()
                   if p.is_dir() and not p.name.startswith("."))
    res, model, mask = _final(out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".locks", ".partial"]
    assert res["ids"] == ref["ids"]
    assert all(torch.equal(model[k], ref_model[k]) for k in ref_model)
    assert all(torch.equal(mask[k], ref_mask[k]) for k in ref_mask)


def test_ctrl_c_exits_130_and_the_rerun_finishes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "cli", "train", "--data", "digits", "--width", "1",
            "--epochs", "40",
            "--out", str(tmp_path), "--json"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".partial/train-*.pt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert list(tmp_path.glob(".partial/train-*.pt"))  # the last epoch was saved
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and json.loads(r.stdout)["metrics"]["epochs"] == 40
    assert not list(tmp_path.glob(".partial/*.pt"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"format": "edgeprune.model/1", "payload": _Evil(str(marker))}, evil)
    for cmd in (["search", evil], ["retrain", evil, "--mask", tmp_path], ["export", evil]):
        r = run_cli(*cmd, "--out", tmp_path / "out")
        assert r.returncode == 2 and not marker.exists(), (cmd, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert "--allow-pickle" in run_cli("search", evil).stderr
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    r = run_cli("search", tmp_path / "raw.pkl", "--out", tmp_path / "out")
    assert r.returncode == 2 and not marker.exists()


# -- integrity -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    r = run_cli(*CHAIN, "--out", out)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_every_artifact_file_is_checked_on_read(chain_run, tmp_path):
    out, _ = chain_run
    stages = set()
    for art in Store(out).artifacts():
        stages.add(art.stage)
        for name in art.manifest["files"]:
            for damage in ("flip", "truncate"):
                copy = tmp_path / f"{name}-{damage}" / art.path.name
                shutil.copytree(art.path, copy)
                raw = (copy / name).read_bytes()
                if damage == "flip":
                    (copy / name).write_bytes(raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 1])
                                              + raw[len(raw) // 2 + 1:])
                else:
                    (copy / name).write_bytes(raw[:len(raw) // 2])
                with pytest.raises(UserError, match=name.replace(".", r"\.")):
                    open_artifact(copy).file(name)
    assert stages >= {"train", "round", "search", "retrain", "export", "validate"}


def test_damaged_inputs_stop_each_stage_with_the_file_named(chain_run, tmp_path):
    out, res = chain_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    arts = {k: run / os.path.relpath(v, out) for k, v in res["artifacts"].items()}
    dense, mask = arts["dense"], arts["mask"]
    raw = bytearray(dense.read_bytes())
    raw[100] ^= 0xFF
    dense.write_bytes(bytes(raw))
    for cmd in (["search", dense, "--method", "eb"], ["retrain", dense, "--mask", mask],
                ["export", dense]):
        r = run_cli(*cmd, "--out", run)
        assert r.returncode == 2 and "model.pt does not match the sha256" in r.stderr, r.stderr
    onnx_path = arts["onnx"]
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    r = run_cli("validate", onnx_path, "--out", run)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# -- bad input: a table --------------------------------------------------------------------

def _bad_files(tmp):
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "text.pt").write_text("hello")
    (tmp / "bad.toml").write_text("epochs = 'three'\n")
    (tmp / "unknown.toml").write_text("[train]\nepohcs = 3\n")
    (tmp / "broken.toml").write_text("epochs = [\n")
    (tmp / "ambiguous.toml").write_text("epochs = 3\n")
    (tmp / "wrongtable.toml").write_text("[search]\nepochs = 3\n")
    (tmp / "bad.npz").write_bytes(b"PK\x03\x04 not really")
    import numpy as np
    np.savez(tmp / "nolabels.npz", x_train=np.zeros((4, 8, 8)))
    np.savez(tmp / "shape.npz", x_train=np.zeros((4, 5)), y_train=np.zeros(4),
             x_test=np.zeros((2, 5)), y_test=np.zeros(2))
    np.savez(tmp / "big.npz", x_train=np.zeros((8, 16, 16)), y_train=np.arange(8) % 2,
             x_test=np.zeros((4, 16, 16)), y_test=np.arange(4) % 2)
    (tmp / "idx").mkdir()
    (tmp / "idx" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    (tmp / "onnx.onnx").write_bytes(b"not onnx")
    (tmp / "readonly").mkdir()
    (tmp / "file-not-dir").write_text("x")


BAD = [
    ["train", "--arch", "alexnet"],
    ["train", "--timesteps", "0"],
    ["train", "--timesteps", "-3"],
    ["train", "--epochs", "0"],
    ["train", "--epochs", "many"],
    ["train", "--width", "0"],
    ["train", "--pool", "median"],
    ["train", "--encoding", "rate"],
    ["train", "--surrogate", "magic"],
    ["train", "--reset", "sideways"],
    ["train", "--tau-mem-inv", "1.5"],
    ["train", "--lr", "-1"],
    ["train", "--batch-size", "0"],
    ["train", "--train-subset", "0"],
    ["train", "--device", "tpu"],
    ["train", "--data", "imagenet"],
    ["train", "--data", "{tmp}/missing.npz"],
    ["train", "--data", "{tmp}/bad.npz"],
    ["train", "--data", "{tmp}/nolabels.npz"],
    ["train", "--data", "{tmp}/shape.npz"],
    ["train", "--data", "fashion-mnist:{tmp}/nowhere"],
    ["train", "--data", "fashion-mnist:{tmp}/idx"],
    ["train", "--data", "cifar10:{tmp}/nowhere"],
    ["train", "--config", "{tmp}/bad.toml"],
    ["train", "--config", "{tmp}/unknown.toml"],
    ["train", "--config", "{tmp}/broken.toml"],
    ["train", "--config", "{tmp}/missing.toml"],
    ["train", "--out", "{tmp}/file-not-dir/sub"],
    ["search", "{tmp}/missing.pt"],
    ["search", "{tmp}/empty.pt"],
    ["search", "{tmp}/text.pt"],
    ["search", "{model}", "--sparsity", "1.5"],
    ["search", "{model}", "--sparsity", "0"],
    ["search", "{model}", "--method", "magic"],
    ["search", "{model}", "--prune-rate", "1"],
    ["search", "{model}", "--rewind-epoch", "7"],
    ["search", "{model}", "--method", "reinit", "--from-mask", "{model_dir}"],
    ["compress", "--config", "{tmp}/ambiguous.toml"],
    ["compress", "--config", "{tmp}/wrongtable.toml"],
    ["compress", "{model}", "--model-def", "{tmp}/nope.py:build"],
    ["search", "{model}", "--data", "{tmp}/big.npz"],
    ["search", "{model}", "--keep-first", "--keep-last", "--sparsity", "0.999"],
    ["search", "{model}", "--et-candidates", "two,three"],
    ["search", "{model}", "--eb-q", "1"],
    ["search", "{model}", "--scope", "planet"],
    ["retrain", "{model}", "--mask", "{model_dir}"],
    ["retrain", "{model}", "--mask", "{tmp}/nowhere"],
    ["export", "{tmp}/missing.pt"],
    ["export", "{model}", "--opset", "3"],
    ["export", "{model}", "--outputs", "everything"],
    ["validate", "{tmp}/onnx.onnx"],
    ["validate", "{tmp}/missing.onnx"],
    ["validate", "{onnx}", "--target", "z80"],
    ["package", "{tmp}/nowhere"],
    ["verify", "{tmp}/nowhere.tar.gz"],
    ["show", "{tmp}"],
    ["ls", "{tmp}/nowhere"],
    ["frobnicate"],
]


def test_bad_inputs_table(chain_run, tmp_path, capsys):
    """Every case in-process through the console script's own entry (cli.run): exit 2, one
    line on stderr, nothing written."""
    import cli

    out, res = chain_run
    _bad_files(tmp_path)
    assert len(BAD) >= 30
    fill = {"tmp": tmp_path, "model": res["artifacts"]["dense"],
            "model_dir": os.path.dirname(res["artifacts"]["dense"]), "onnx": res["artifacts"]["onnx"]}
    for args in BAD:
        args = [a.format(**fill) for a in args]
        dest = tmp_path / "out"
        if "--out" not in args and args[0] not in ("show", "ls", "verify", "frobnicate"):
            args += ["--out", str(dest)]
        capsys.readouterr()
        rc = cli.run(args)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, (args, rc, err[-800:])
        assert len(lines) == 1 and "Traceback" not in err, (args, err)
        assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()], args


@pytest.mark.parametrize("args", [["train", "--epochs", "many"], ["search", "/nonexistent.pt"],
                                  ["frobnicate"]])
def test_console_script_exit_codes_without_traceback(args, tmp_path):
    """A few through a real subprocess: the installed entry maps failures the same way."""
    r = run_cli(*args, *(["--out", tmp_path] if args[0] != "frobnicate" else []))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


# -- recipe parsing (property-based) ---------------------------------------------------------

KNOWN = {("train", "epochs"): int, ("train", "lr"): float, ("train", "augment"): bool,
         ("search", "et_lambda"): float, ("search", "method"): str, ("", "data"): str,
         ("", "seed"): int}
VALUES = {int: st.integers(-5, 10**6), float: st.floats(allow_nan=False, allow_infinity=False),
          bool: st.booleans(), str: st.text(max_size=20)}


def _raw(items: dict) -> dict:
    raw: dict = {}
    for (table, key), value in items.items():
        (raw.setdefault(table, {}) if table else raw)[key] = value
    return raw


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(KNOWN)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALUES[KNOWN[k]] for k in keys})))
def test_recipe_accepts_right_types_in_their_tables(values):
    r = recipe.parse(_raw(values))
    for (table, key), value in values.items():
        got = r.top[key] if not table else r.tables[table][key]
        assert got == value and type(got) is type(value)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(KNOWN)),
       st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.booleans()))
def test_recipe_rejects_wrong_types(key, value):
    want = KNOWN[key]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if ok or (want is float and isinstance(value, int) and not isinstance(value, bool)):
        return
    with pytest.raises(UserError, match=key[1]):
        recipe.parse(_raw({key: value}))


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(
    lambda k: not any(k.replace("-", "_") == name for _, name in KNOWN)
    and k.replace("-", "_") not in {f.name for s in recipe.schema.STAGES
                                    for f in recipe.schema.fields_of_stage(s)}
    and k.replace("-", "_") not in {f.name for c in recipe.schema.RUN_WIDE
                                    for f in recipe.schema.fields_of(c)}))
def test_recipe_rejects_unknown_keys(key):
    with pytest.raises(UserError, match="unknown key"):
        recipe.parse({key: 1})
    with pytest.raises(UserError, match=r"unknown key .* in \[search\]"):
        recipe.parse({"search": {key: 1}})


def test_recipe_tables_reach_only_their_stage():
    r = recipe.parse({"seed": 3, "width": 0.5, "train": {"epochs": 4}, "search": {"round_epochs": 1},
                      "retrain": {"epochs": 2}})
    assert r.values("train", ("train", "search", "retrain")) == {"width": 0.5, "epochs": 4}
    assert r.values("retrain", ("train", "search", "retrain")) == {"epochs": 2}
    assert r.values("search", ("search",)) == {"round_epochs": 1} and r.run_values() == {"seed": 3}
    flat = recipe.parse({"epochs": 4})
    assert flat.values("train", ("train",)) == {"epochs": 4}  # one stage has it: unambiguous
    with pytest.raises(UserError, match=r"ambiguous.*\[train\] and \[retrain\]"):
        flat.values("train", ("train", "search", "retrain"))
    with pytest.raises(UserError, match=r"'epochs' in \[search\].*belongs to \[train\], \[retrain\]"):
        recipe.parse({"search": {"epochs": 3}})
    with pytest.raises(UserError, match=r"'seed' in \[train\] is run-wide"):
        recipe.parse({"train": {"seed": 3}})
    with pytest.raises(UserError, match=r"unknown table \[model\]"):
        recipe.parse({"model": {"width": 0.5}})

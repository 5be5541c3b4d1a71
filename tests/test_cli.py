import json

from .conftest import run_cli


def test_train_json_then_cached_then_show_and_ls(tmp_path):
    args = ["train", "--data", "digits", "--epochs", "2", "--train-subset", "300",
            "--out", tmp_path, "--json"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["cached"] is False and 0.0 <= first["metrics"]["test_accuracy"] <= 1.0
    assert first["metrics"]["prunable_weights"] == 86816  # the default width on 8x8: 2
    r2 = run_cli(*args)
    second = json.loads(r2.stdout)
    assert second["cached"] is True and second["id"] == first["id"]

    shown = json.loads(run_cli("show", first["model"], "--json").stdout)
    assert shown["id"] == first["id"] and shown["stage"] == "train"
    listed = json.loads(run_cli("ls", tmp_path, "--json").stdout)
    assert [a["id"] for a in listed["artifacts"]] == [first["id"]]
    human = run_cli("ls", tmp_path)
    assert first["id"] in human.stdout


def test_recipe_fills_defaults_and_cli_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('train-subset = 100\n[train]\nepochs = 1\nwidth = 0.5\n')
    r = run_cli("train", "--config", recipe, "--epochs", "2", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    man = json.loads(run_cli("show", json.loads(r.stdout)["model"], "--json").stdout)
    assert man["config"]["train"]["epochs"] == 2  # command line wins
    assert man["config"]["data"]["train_subset"] == 100 and man["config"]["model"]["width"] == 0.5


def test_compress_recipe_reaches_each_stage_and_the_manifests_show_it(tmp_path):
    """One table per stage: the dense run, the IMP rounds and the retraining get their own
    epochs; a stage-prefixed option overrides the recipe's table."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('train_subset = 200\n[train]\nepochs = 4\nwidth = 1.0\n'
                      '[search]\nround_epochs = 1\n'
                      'method = "imp"\nsparsity = 0.6\n[retrain]\nepochs = 2\n'
                      '[validate]\nlatency_budget_ms = 10000.0\n')
    r = run_cli("compress", "--config", recipe, "--search-lr", "0.05", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    ids = json.loads(r.stdout)["ids"]

    def config(stage, key):
        return json.loads((tmp_path / f"{stage}-{ids[key]}" / "manifest.json").read_text())["config"]

    assert config("train", "dense")["train"]["epochs"] == 4
    search = config("search", "search")["search"]
    assert search["round_epochs"] == 1 and search["lr"] == 0.05 and search["method"] == "imp"
    assert config("retrain", "retrain")["train"]["epochs"] == 2
    rounds = [json.loads((p / "manifest.json").read_text()) for p in tmp_path.glob("round-*")]
    assert rounds and all(m["config"]["train"]["epochs"] == 1 for m in rounds)


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    bad_recipe = tmp_path / "bad.toml"
    bad_recipe.write_text("epochz = 3\n")
    for args in (["train", "--arch", "alexnet"], ["train", "--timesteps", "0"],
                 ["train", "--epochs", "0"], ["train", "--data", "/nonexistent/x.npz"],
                 ["train", "--config", bad_recipe], ["train", "--epochs", "many"],
                 ["show", tmp_path], ["ls", tmp_path / "missing"]):
        r = run_cli(*args, "--out", tmp_path / "out") if args[0] == "train" else run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()


def test_help_lists_defaults():
    r = run_cli("train", "--help-all")
    assert r.returncode == 0 and "--timesteps" in r.stdout and "convnet" in r.stdout


def test_two_identical_compress_runs_at_once_share_one_run_directory(tmp_path):
    """CI jobs sharing a cache directory: both exit 0 with the same artifact ids; each
    artifact is computed once (the second run waits on its lock, then finds it)."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    args = [sys.executable, "-m", "cli", "compress", "--data", "digits", "--width", "1",
            "--train-subset", "200",
            "--epochs", "2", "--method", "imp", "--sparsity", "0.5", "--prune-rate", "0.5",
            "--retrain-epochs", "1", "--latency-budget-ms", "10000", "--out", str(tmp_path),
            "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-500:] for _, e in outs]
    a, b = (json.loads(o) for o, _ in outs)
    assert a["ids"] == b["ids"]
    for stage in ("dense", "search", "retrain", "export", "validate"):
        assert a["cached"][stage] or b["cached"][stage], stage  # computed once, found once
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")
                and p.name not in (".locks", ".partial")]

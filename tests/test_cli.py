import json

from .conftest import run_cli


def test_train_json_then_cached_then_show_and_ls(tmp_path):
    args = ["train", "--data", "digits", "--epochs", "2", "--train-subset", "300",
            "--out", tmp_path, "--json"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["cached"] is False and 0.0 <= first["metrics"]["test_accuracy"] <= 1.0
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
    recipe.write_text('[train]\nepochs = 1\ntrain-subset = 100\n[model]\nwidth = 0.5\n')
    r = run_cli("train", "--config", recipe, "--epochs", "2", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    man = json.loads(run_cli("show", json.loads(r.stdout)["model"], "--json").stdout)
    assert man["config"]["train"]["epochs"] == 2  # command line wins
    assert man["config"]["data"]["train_subset"] == 100 and man["config"]["model"]["width"] == 0.5


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
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--timesteps" in r.stdout and "convnet" in r.stdout

"""The one schema (edgeprune.config) and what derives from it: command-line options, recipe
precedence, the layer registry."""
import dataclasses

import pytest
import typer
from torch import nn
from typer.testing import CliRunner

from commands.options import Group, configured
from edgeprune import config, layers
from edgeprune.errors import UserError


def test_every_option_has_help_a_type_and_a_valid_default():
    for stage, classes in {**config.STAGES, "run": config.RUN_WIDE}.items():
        for cls in classes:
            cls()  # the defaults pass the dataclass's own checks
            for f in config.fields_of(cls):
                assert f.help.strip(), (stage, f.name)
                assert f.base in (int, float, bool, str, tuple), (stage, f.name, f.type)


def test_nested_dataclasses_are_flattened_and_rebuilt():
    names = [f.name for f in config.fields_of(config.ModelConfig)]
    assert "v_th" in names and "neuron" not in names
    m = config.build(config.ModelConfig, {"v_th": 2.0, "width": 0.5})
    assert m.neuron.v_th == 2.0 and m.width == 0.5 and m.neuron.tau_mem_inv == 0.75
    assert config.fields_of(config.DataConfig)[0].name == "data"  # named by its --data flag


@pytest.mark.parametrize("cls, values, needle", [
    (config.ModelConfig, {"arch": "alexnet"}, "unknown architecture"),
    (config.SearchConfig, {"sparsity": 1.0}, "sparsity must be in"),
    (config.TrainConfig, {"epochs": 0}, "epochs must be at least 1"),
    (config.ExportConfig, {"opset": 9}, "opset 9"),
    (config.DataConfig, {"train_subset": 0}, "train-subset"),
])
def test_bad_values_are_one_line_user_errors(cls, values, needle):
    with pytest.raises(UserError, match=needle):
        config.build(cls, values)


def test_coerce_follows_the_field_type():
    f = {x.name: x for x in config.fields_of(config.SearchConfig)}
    assert config.coerce(f["lr"], 1, "r") == 1.0 and isinstance(config.coerce(f["lr"], 1, "r"), float)
    assert config.coerce(f["et_candidates"], "4,2,3", "r") == (2, 3, 4)
    assert config.coerce(f["et_candidates"], [3, 2], "r") == (2, 3)
    assert config.coerce(f["rewind_epoch"], None, "r") is None
    with pytest.raises(UserError, match="eb_q must be int"):
        config.coerce(f["eb_q"], True, "r")


def _probe_app():
    """A command built like the real ones: two stages sharing `epochs` and `lr`."""
    app = typer.Typer()
    seen = {}

    @app.command()
    @configured(Group("run", "run", config.RunConfig), Group("train", "train", config.TrainConfig),
                Group("retrain", "retrain", config.RetrainConfig))
    def go(run: config.RunConfig = None, train: config.TrainConfig = None,
           retrain: config.RetrainConfig = None):
        seen.update(run=run, train=train, retrain=retrain)

    return app, seen


def test_precedence_prefixed_then_plain_then_recipe_table_then_default(tmp_path):
    app, seen = _probe_app()
    recipe = tmp_path / "r.toml"
    recipe.write_text("seed = 7\n[train]\nepochs = 4\nlr = 0.5\n[retrain]\nepochs = 2\n")
    runner = CliRunner()
    r = runner.invoke(app, ["--config", str(recipe)])
    assert r.exit_code == 0, r.output
    assert (seen["train"].epochs, seen["retrain"].epochs, seen["run"].seed) == (4, 2, 7)
    assert seen["train"].lr == 0.5 and seen["retrain"].lr == 0.1  # tables reach one stage
    r = runner.invoke(app, ["--config", str(recipe), "--lr", "0.2", "--retrain-lr", "0.3"])
    assert r.exit_code == 0, r.output
    assert seen["train"].lr == 0.2 and seen["retrain"].lr == 0.3  # command line over recipe
    r = runner.invoke(app, ["--epochs", "9"])  # the plain option reaches every stage with it
    assert (seen["train"].epochs, seen["retrain"].epochs) == (9, 9)
    r = runner.invoke(app, [])
    assert seen["train"] == config.TrainConfig() and seen["retrain"] == config.RetrainConfig()


def test_help_shows_each_stage_prefixed_option_with_its_default():
    from commands.options import all_shown

    app, _ = _probe_app()
    with all_shown():  # what --help-all shows
        text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for flag in ("--epochs", "--train-epochs", "--retrain-epochs", "--seed", "--config"):
        assert flag in text, flag
    assert "as the dense model" in text and "default: 30" in text


@pytest.mark.parametrize("module", [
    nn.Conv2d(2, 4, 3, 2, 1, bias=False), nn.Linear(5, 3), nn.BatchNorm1d(4),
    nn.BatchNorm2d(3, eps=1e-3), nn.AvgPool2d(2), nn.MaxPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(1),
    nn.Flatten(), nn.Dropout(0.3), nn.Identity()])
def test_layer_registry_describes_and_rebuilds_every_kind(module):
    d = layers.describe(module)
    rebuilt = layers.build(d)
    assert isinstance(rebuilt, type(module)) and layers.describe(rebuilt) == d
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in module.state_dict().items()}


def test_layer_registry_refuses_unknown_types():
    assert layers.describe(nn.ReLU()) is None
    with pytest.raises(UserError, match="unknown layer type 'relu'"):
        layers.build({"type": "relu"})


def test_stage_dataclasses_are_frozen_so_ids_cannot_drift():
    for classes in config.STAGES.values():
        for cls in classes:
            assert cls.__dataclass_params__.frozen, cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.SearchConfig().sparsity = 0.5  # type: ignore[misc]

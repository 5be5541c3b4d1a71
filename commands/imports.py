"""edgeprune import-model: bring a model written elsewhere."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeprune import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ImportConfig, RunConfig

from . import render
from .options import Group, JsonOpt, OutOpt, configured


@configured(Group("data", "run", DataConfig), Group("run", "run", RunConfig, exclude=("device",)),
            Group("cfg", "import", ImportConfig))
def import_model(
    state_dict_arg: Optional[Path] = typer.Argument(None, metavar="[STATE_DICT]",
                                                    help="Your weights (as --state-dict)."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="FILE.py:FUNCTION, a "
                                            "function returning your nn.Sequential or Norse "
                                            "SequentialState (the file is run)."),
    state_dict: Optional[Path] = typer.Option(None, "--state-dict", help="Your weights (a "
                                              "state_dict saved with torch.save), loaded with "
                                              "weights_only=True."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also accept files that "
                                      "need unpickling code, e.g. a whole pickled nn.Module "
                                      "(then --model-def is not needed). Runs code from the "
                                      "file: only for files you trust."),
    data: DataConfig = None, run: RunConfig = None, cfg: ImportConfig = None,
    out_dir: Path = OutOpt, as_json: bool = JsonOpt,
):
    """Import your own Norse model (Python definition + state_dict) as an edgeprune model.pt.

    Supported: nn.Sequential or Norse SequentialState of Conv2d, Linear, BatchNorm1d/2d,
    AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity, and Norse LIFBoxCell,
    LICell, LIBoxCell. The model is rebuilt from a layer list and checked against yours, stepped
    T times, before it is written; search, retrain and export then take the model.pt without
    your code. --data names the dataset it was trained on (default digits; `none` to give
    --input-shape and --num-classes instead)."""
    weights = state_dict or state_dict_arg
    if weights is None:
        from edgeprune.errors import UserError
        raise UserError("give the weights: --state-dict W.pt (or W.pt as the argument)")
    art, cached = pipeline.import_model(Store(out_dir), model_def, weights, cfg, data,
                                        allow_pickle, run)
    m = art.metrics
    t = render.columns(f"imported {model_def or weights}" + render.cached_mark(cached),
                       ["layers", "parameters", "max |Δ| vs your model", "test accuracy",
                        "spike rate"],
                       [[str(m["layers"]), f"{m['parameters']:,}",
                         f"{m['parity_max_abs_diff']:.2e}", render.pct(m.get("test_accuracy")),
                         f"{m['mean_spike_rate']:.3f}" if "mean_spike_rate" in m else "-"]])
    render.emit(as_json, {"stage": "import", "id": art.id, "cached": cached,
                          "model": str(art.path / "model.pt"), "metrics": m}, t,
                [f"model: {art.path / 'model.pt'}"])

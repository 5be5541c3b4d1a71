"""edgeprune import-model: bring a model written elsewhere."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ImportConfig, RunConfig

from . import render
from .options import Group, JsonOpt, OutOpt, configured


@configured(Group("data", "run", DataConfig), Group("run", "run", RunConfig, exclude=("device",)),
            Group("cfg", "import", ImportConfig))
def import_model(
    source_arg: Optional[Path] = typer.Argument(None, metavar="[WEIGHTS|MODEL.nir]",
                                                help="Your weights (as --state-dict), or a NIR "
                                                "file."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="FILE.py:FUNCTION, a "
                                            "function returning your nn.Sequential (Norse or "
                                            "snnTorch neurons) or Norse SequentialState (the "
                                            "file is run)."),
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
    """Import a model from elsewhere as an edgeprune model.pt: your own Norse, snnTorch,
    SpikingJelly, Sinabs or Rockpool model (Python definition + state_dict), or a NIR graph
    (MODEL.nir, read as data: no code runs).

    From code: nn.Sequential, Norse SequentialState or Rockpool TorchSequential (or a module
    whose only child is one) of Conv1d/Conv2d, Linear, BatchNorm1d/2d, AvgPool2d, MaxPool2d,
    AdaptiveAvgPool2d, Flatten, Dropout, Identity (SpikingJelly's layer.* too), Sinabs SumPool2d,
    Rockpool LinearTorch, and Norse LIFBoxCell, LIFCell, LICell, LIBoxCell, snnTorch Leaky,
    Synaptic (init_hidden or not), SpikingJelly IFNode, LIFNode, ParametricLIFNode, Sinabs IAF,
    LIF, IAFSqueeze, LIFSqueeze or Rockpool LIFTorch. The model is rebuilt from a layer list and
    checked against yours, run T steps the way its framework runs it, before it is written.
    From NIR: LIF, CubaLIF, IF, LI, I, Affine, Linear, Conv1d/2d, Flatten, SumPool2d, AvgPool2d,
    Scale, Threshold in a chain; --dt and --convention say how to integrate its equations.
    The import's fidelity (agreement and max logit difference against your module, the NIR
    equations and the writing framework's reader) is in its metrics. --data names the dataset
    (default digits; `none` to give --input-shape and --num-classes instead)."""
    weights = state_dict or source_arg
    if weights is None:
        from edgeprune.errors import UserError
        raise UserError("give the weights (--state-dict W.pt, or W.pt as the argument) or a "
                        "NIR file")
    art, cached = pipeline.import_model(Store(out_dir), model_def, weights, cfg, data,
                                        allow_pickle, run)
    m = art.metrics
    diff = m.get("parity_max_abs_diff")
    t = render.columns(f"imported {model_def or weights}" + render.cached_mark(cached),
                       ["layers", "parameters", "neurons", "max |Δ| vs your model",
                        "test accuracy", "spike rate"],
                       [[str(m["layers"]), f"{m['parameters']:,}", ", ".join(m.get("neurons", [])),
                         "-" if diff is None else f"{diff:.2e}",
                         render.pct(m.get("test_accuracy")),
                         f"{m['mean_spike_rate']:.3f}" if "mean_spike_rate" in m else "-"]])
    render.emit(as_json, {"stage": "import", "id": art.id, "cached": cached,
                          "model": str(art.path / "model.pt"), "metrics": m}, t,
                [*fidelity_lines(m), f"model: {art.path / 'model.pt'}"])


def fidelity_lines(m: dict) -> list[str]:
    """How faithful the import is, one line per reference."""
    out = []
    for f in m.get("fidelity", []):
        if "unavailable" in f:
            out.append(f"fidelity vs {f['reference']}: not measured ({f['unavailable']})")
            continue
        acc = f.get("reference_accuracy")
        out.append(f"fidelity vs {f['reference']}: {f['prediction_agreement']:.2%} same class, "
                   f"max |Δ logits| {f['max_abs_logit_diff']:.3g} on {f['inputs']} inputs"
                   + ("" if acc is None else f" (its accuracy {acc:.2%})"))
    return out

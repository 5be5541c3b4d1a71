"""edgeprune train."""
from __future__ import annotations

from pathlib import Path

import pipeline
from edgeprune.artifacts import Store
from edgeprune.config import DataConfig, ModelConfig, RunConfig, TrainConfig

from . import render
from .options import Group, JsonOpt, OutOpt, configured


@configured(Group("data", "run", DataConfig), Group("run", "run", RunConfig),
            Group("model", "train", ModelConfig), Group("optim", "train", TrainConfig))
def train(data: DataConfig, run: RunConfig, model: ModelConfig, optim: TrainConfig,
          out_dir: Path = OutOpt, as_json: bool = JsonOpt):
    """Train a dense SNN and store it as a self-describing model.pt artifact."""
    with render.progress(as_json) as report:
        art, cached = pipeline.train(Store(out_dir), data, model, optim, run, report)
    m = art.metrics
    t = render.columns(f"dense {model.arch} on {art.config['data']['name']}"
                       + render.cached_mark(cached),
                       ["test accuracy", "spike rate", "prunable weights", "epochs", "train time"],
                       [[f"{m['test_accuracy']:.2%}", f"{m['mean_spike_rate']:.3f}",
                         f"{m['prunable_weights']:,}", str(m["epochs"]),
                         f"{m['train_seconds']:.1f} s"]])
    render.emit(as_json, {"stage": "train", "id": art.id, "cached": cached,
                          "model": str(art.path / "model.pt"), "metrics": m}, t,
                [f"model: {art.path / 'model.pt'}"])

"""The import stage: a user's model (definition + weights) rebuilt as an edgeprune model.pt,
proven equal to the user's module on a probe batch before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint, layers
from ..artifacts import Artifact, Job, Store
from ..config import ImportConfig
from ..data import Dataset
from ..errors import UserError
from ..hashing import file_sha256
from ..inputs import data_identity
from ..config import DataConfig
from ..models import ModelSpec
from ..trainer import evaluate
from . import norse
from .usercode import load_definition, load_weights

PARITY_TOL = 1e-5
PROBE = 64


def name_map(paths: list[str], stem_len: int) -> dict[str, str]:
    """User layer path -> our module name (stem.i for the stateless prefix, body.j after it)."""
    return {p: (f"stem.{i}" if i < stem_len else f"body.{i - stem_len}")
            for i, p in enumerate(paths)}


def copy_weights(user: nn.Module, ours: nn.Module, paths: list[str], stem_len: int) -> None:
    mapping = name_map(paths, stem_len)
    sd = {}
    for key, value in user.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if layer not in mapping:
            raise UserError(f"weight {key} of the model belongs to no imported layer")
        sd[f"{mapping[layer]}.{leaf}"] = value
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("normalize.")]  # ours, not the user's
    if missing or unexpected:
        raise UserError(f"the rebuilt model does not fit the weights (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")


def user_module(model_def: str | None, state_dict: Path, allow_pickle: bool
                ) -> tuple[nn.Module, str | None]:
    """The user's module with their weights, and the content hash of its definition file."""
    weights = load_weights(state_dict, allow_pickle)
    if isinstance(weights, nn.Module):
        return weights, None
    if not model_def:
        raise UserError("--model-def FILE.py:FUNCTION is needed to rebuild the model the "
                        f"state_dict {state_dict} belongs to")
    user = load_definition(model_def)  # checks the file exists before it is hashed
    norse.convert(user)  # an unsupported layer is the clearer error than weights that miss it
    try:
        user.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"the state_dict {state_dict} does not fit the model of "
                        f"{model_def}: {' '.join(str(e).split())[:300]}") from None
    return user, file_sha256(Path(model_def.rsplit(":", 1)[0]))


def import_model(store: Store, model_def: str | None, state_dict: Path, cfg: ImportConfig,
                 data: DataConfig | None = None, ds: Dataset | None = None,
                 allow_pickle: bool = False, seed: int = 0) -> tuple[Artifact, bool]:
    """Import a user's Norse model as an `import-<id>/` artifact. Returns (artifact, cached).

    Input shape and classes come from `ds` (whose test accuracy becomes a metric) or from
    `cfg`. cfg.mean/std: the normalization the user's model expects (default none: raw [0, 1]
    pixels); it becomes part of the model, like the train stage's."""
    state_dict = Path(state_dict)
    user, def_sha = user_module(model_def, state_dict, allow_pickle)
    if ds is not None:
        input_shape, num_classes, class_names = ds.input_shape, ds.num_classes, ds.class_names
    elif not cfg.input_shape or cfg.num_classes is None:
        raise UserError("give --data, or --input-shape and --num-classes")
    else:
        input_shape, num_classes = cfg.input_shape, cfg.num_classes
        class_names = [str(i) for i in range(num_classes)]
    channels = input_shape[0]
    mean, std = cfg.mean or (0.0,) * channels, cfg.std or (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"mean/std need {channels} values (one per input channel)")

    described, paths = norse.convert(user)
    first_lif = next(d for d in described if d["type"] == "lif")
    spec = ModelSpec(arch="sequential", timesteps=cfg.timesteps, encoding=cfg.encoding,
                     neuron=layers.build(first_lif).params, input_shape=tuple(input_shape),
                     num_classes=num_classes, class_names=tuple(class_names), mean=tuple(mean),
                     std=tuple(std), layers=tuple(described))
    # The definition is identified by its content and function name, not where the file lies.
    config = {"model_def": {"function": model_def.rsplit(":", 1)[1] if def_sha else None,
                            "sha256": def_sha},
              "state_dict_sha256": file_sha256(state_dict), "model": spec.to_dict(), "seed": seed}
    if ds is not None:  # absent otherwise: stages read config["data"] as "the model's data"
        config["data"] = data_identity(data, ds)

    def compute(job: Job) -> dict:
        torch.manual_seed(seed)
        ours = spec.build()
        copy_weights(user, ours, paths, layers.split_stem(described))
        g = torch.Generator().manual_seed(seed)
        x = ds.x_test[:PROBE].float() if ds is not None else \
            torch.rand((PROBE, *input_shape), generator=g)
        diff = norse.parity(user, ours, x, cfg.timesteps)
        if not diff < PARITY_TOL:
            raise UserError(f"the rebuilt model differs from yours by {diff:.3g} (max abs, "
                            f"per-step outputs over {cfg.timesteps} steps; tolerance "
                            f"{PARITY_TOL}): a layer behaves differently from its Norse/PyTorch "
                            "original; not imported")
        metrics = {"parity_max_abs_diff": diff, "parity_probe": len(x), "layers": len(described),
                   "parameters": sum(p.numel() for p in ours.parameters())}
        if ds is not None:
            ev = evaluate(ours, ds.x_test, ds.y_test, cfg.timesteps)
            metrics.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"],
                           spike_rate=ev["spike_rate"], mean_spike_rate=ev["mean_spike_rate"])
        checkpoint.save(job.dir / "model.pt", spec, ours)
        (job.dir / "layers.json").write_text(json.dumps(
            [{"user_path": p, **d} for p, d in zip(paths, described)], indent=2) + "\n")
        return metrics

    return store.run("import", config, [], compute)

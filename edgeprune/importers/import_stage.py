"""The import stage: a model from elsewhere rebuilt as an edgeprune model.pt.

Two sources:
- code: the user's definition (FILE.py:FUNCTION) + weights, a Norse, snnTorch, SpikingJelly,
  Sinabs or Rockpool network. It is proven equal to the user's module (run the way its
  framework runs it) on a probe batch before anything is written.
- NIR: a `.nir` file, read as data (importers/nirfile.py). There is no user's module to prove
  against; the import is measured against the reference simulations the caller passes (the
  NIR equations in numpy, the writing framework's own reader where installed).

Either way the artifact's metrics say how faithful the import is: `fidelity`, one entry per
reference, with the agreement of predictions and the max logit difference on the test set (or
the probe).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import checkpoint, layers
from ..artifacts import Artifact, Job, Store
from ..config import DataConfig, ImportConfig, NeuronParams
from ..data import Dataset
from ..errors import UserError
from ..hashing import file_sha256
from ..stage_inputs import data_identity
from ..models import ModelSpec
from ..training import evaluate
from . import code, nirfile
from .usercode import load_definition, load_weights

PARITY_TOL = 1e-5
PROBE = 64
FIDELITY_IMAGES = 1000  # test images the fidelity report runs (all of a small test set)

# A reference simulation of a NIR import: (name, run(images (B, ...) numpy, T) -> per-step
# outputs (T, B, K) numpy, binding), or (name, reason it is unavailable, binding). A binding
# reference computes the convention's own semantics: the import must agree with it.
Reference = tuple[str, "Callable | str", bool]
# A NIR import is refused (exit 2) unless --accept-mismatch when a binding reference agrees on
# fewer predictions than this, when a spiking layer never fires on the inputs, or when the
# import classifies the test set at chance and no binding reference confirms it.
MIN_AGREEMENT = 0.99
# bump when a NIR import computes something else for the same file (2: the checks above, and
# their findings in metrics.problems, which a cached import is held to)
NIR_FORMAT = 2
CHANCE_FACTOR = 1.5  # accuracy at most this × 1/classes counts as chance


def name_map(paths: list[str], stem_len: int) -> dict[str, str]:
    """User layer path -> our module name (stem.i for the stateless prefix, body.j after it)."""
    return {p: (f"stem.{i}" if i < stem_len else f"body.{i - stem_len}")
            for i, p in enumerate(paths)}


def copy_weights(user: nn.Module, ours: nn.Module, paths: list[str], stem_len: int) -> None:
    mapping = name_map(paths, stem_len)
    sd = {}
    for key, value in code.user_state(user).items():
        layer, _, leaf = key.rpartition(".")
        if layer not in mapping:
            raise UserError(f"weight {key} of the model belongs to no imported layer")
        sd[f"{mapping[layer]}.{leaf}"] = value
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("normalize.")]  # ours, not the user's
    # neuron parameters (snnTorch's beta, threshold, ...) live in our layer descriptions
    unexpected = [k for k in unexpected if not _neuron_entry(ours, k)]
    if missing or unexpected:
        raise UserError(f"the rebuilt model does not fit the weights (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")


def _neuron_entry(ours: nn.Module, key: str) -> bool:
    layer = key.rpartition(".")[0]
    m = dict(ours.named_modules()).get(layer)
    return m is not None and getattr(m, "stateful", False)


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
    code.convert(user)  # an unsupported layer is the clearer error than weights that miss it
    # a neuron's recorded state (Sinabs' v_mem, shaped by the last training batch) is not a
    # weight: every run starts from the initial state
    states = code.state_keys(user)
    try:
        if states:
            missing, unexpected = user.load_state_dict(
                {k: v for k, v in weights.items() if k not in states}, strict=False)
            missing = [k for k in missing if k not in states]
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing[:3]}, unexpected keys "
                                   f"{unexpected[:3]}")
        else:
            user.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"the state_dict {state_dict} does not fit the model of "
                        f"{model_def}: {' '.join(str(e).split())[:300]}") from None
    return user, file_sha256(Path(model_def.rsplit(":", 1)[0]))


def _io(cfg: ImportConfig, ds: Dataset | None, shape=None, classes=None):
    """Input shape, classes, class names, mean and std of an import."""
    if ds is not None:
        input_shape, num_classes, class_names = ds.input_shape, ds.num_classes, ds.class_names
    elif (not cfg.input_shape and shape is None) or (cfg.num_classes is None and classes is None):
        raise UserError("give --data, or --input-shape and --num-classes")
    else:
        input_shape = cfg.input_shape or shape
        num_classes = cfg.num_classes if cfg.num_classes is not None else classes
        class_names = [str(i) for i in range(num_classes)]
    channels = input_shape[0]
    mean, std = cfg.mean or (0.0,) * channels, cfg.std or (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"mean/std need {channels} values (one per input channel)")
    return tuple(input_shape), num_classes, tuple(class_names), tuple(mean), tuple(std)


def _first_neuron(described: list[dict]) -> NeuronParams:
    """The spec's `neuron` (recorded in exports' metadata): the first box LIF's parameters,
    else the defaults (every layer's own description is in the layer list)."""
    d = next((d for d in described if d["type"] == "lif"), None)
    return layers.build(d).params if d else NeuronParams()


def _probe(ds: Dataset | None, input_shape, seed: int, n: int) -> torch.Tensor:
    if ds is not None:
        return ds.x_test[:n].float()
    return torch.rand((n, *input_shape), generator=torch.Generator().manual_seed(seed))


def agreement(ref: np.ndarray, got: np.ndarray, source: str) -> dict:
    """Per-step outputs (T, B, K) of a reference and of the import, compared as a user sees
    them: predictions (argmax of the sum over T) and logits."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    rs, gs = ref.sum(0), got.sum(0)
    return {"reference": source, "inputs": int(ref.shape[1]),
            "prediction_agreement": float((rs.argmax(-1) == gs.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(rs - gs).max()),
            "max_abs_step_diff": float(np.abs(ref - got).max())}


def _metrics(ours, described, ds, cfg, x_probe) -> dict:
    metrics = {"layers": len(described), "parameters": sum(p.numel() for p in ours.parameters()),
               "neurons": sorted({d["type"] for d in described
                                  if layers.KINDS[d["type"]].neuron})}
    if ds is not None:
        ev = evaluate(ours, ds.x_test, ds.y_test, cfg.timesteps)
        metrics.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"],
                       spike_rate=ev["spike_rate"], mean_spike_rate=ev["mean_spike_rate"])
    return metrics


def _accuracy(steps: np.ndarray, ds: Dataset | None, n: int) -> float | None:
    if ds is None:
        return None
    return float((steps.sum(0).argmax(-1) == ds.y_test[:n].numpy()).mean())


def import_model(store: Store, model_def: str | None, state_dict: Path, cfg: ImportConfig,
                 data: DataConfig | None = None, ds: Dataset | None = None,
                 allow_pickle: bool = False, seed: int = 0) -> tuple[Artifact, bool]:
    """Import a user's model from code (importers/code.py) as an `import-<id>/` artifact. Returns
    (artifact, cached).

    Input shape and classes come from `ds` (whose test accuracy becomes a metric) or from
    `cfg`. cfg.mean/std: the normalization the user's model expects (default none: raw [0, 1]
    pixels); it becomes part of the model, like the train stage's."""
    state_dict = Path(state_dict)
    user, def_sha = user_module(model_def, state_dict, allow_pickle)
    input_shape, num_classes, class_names, mean, std = _io(cfg, ds)
    described, paths = code.convert(user)
    fws = code.frameworks_of(user)
    spec = ModelSpec(arch="sequential", timesteps=cfg.timesteps, encoding=cfg.encoding,
                     neuron=_first_neuron(described), input_shape=input_shape,
                     num_classes=num_classes, class_names=class_names, mean=mean, std=std,
                     layers=tuple(described))
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
        x = _probe(ds, input_shape, seed, PROBE)
        diff = code.parity(user, ours, x, cfg.timesteps)
        if not diff < PARITY_TOL:
            raise UserError(f"the rebuilt model differs from yours by {diff:.3g} (max abs, "
                            f"per-step outputs over {cfg.timesteps} steps; tolerance "
                            f"{PARITY_TOL}): a layer behaves differently from its original; "
                            "not imported")
        metrics = {"source": "code", "frameworks": {fw.NAME: fw.version() for fw in fws},
                   "parity_max_abs_diff": diff, "parity_probe": len(x),
                   **_metrics(ours, described, ds, cfg, x)}
        xf = _probe(ds, input_shape, seed, FIDELITY_IMAGES)
        ref, got = code.reference_run(user, ours, xf, cfg.timesteps)
        names = " + ".join(f"{fw.NAME} {fw.version()}" for fw in fws) or "PyTorch"
        fid = agreement(ref.numpy(), got.numpy(), f"your module, run by {names}")
        if ds is not None:
            fid["reference_accuracy"] = _accuracy(ref.numpy(), ds, len(xf))
        metrics["fidelity"] = [fid]
        checkpoint.save(job.dir / "model.pt", spec, ours)
        (job.dir / "layers.json").write_text(json.dumps(
            [{"user_path": p, **d} for p, d in zip(paths, described)], indent=2) + "\n")
        return metrics

    return store.run("import", config, [], compute)


@torch.no_grad()
def _activity(model: nn.Module, x: torch.Tensor, timesteps: int) -> dict:
    """Layer name -> the fraction of its outputs that are not 0, for every layer whose output
    is spikes or spike counts, on the inputs `x`."""
    seen: dict[str, list] = {}

    def hook(name):
        def record(_m, _inp, out):
            seen[name][0] += float((out != 0).sum())
            seen[name][1] += out.numel()
        return record

    handles = []
    for name, m in model.named_modules():
        kind = getattr(m, "kind", None)
        if kind is not None and (kind.spiking or kind.counts) or \
                (kind is None and getattr(m, "spiking", False)):
            seen[name] = [0.0, 0]
            handles.append(m.register_forward_hook(hook(name)))
    try:
        model.eval()(x, timesteps)
    finally:
        for h in handles:
            h.remove()
    return {n: (a / b if b else 0.0) for n, (a, b) in seen.items()}


def problems(metrics: dict, num_classes: int | None) -> list[str]:
    """Why a NIR import does not compute the network its file describes (empty: none found):
    a spiking layer that never fires, chance accuracy, a binding reference that disagrees or
    could not run."""
    out = []
    silent = [n for n, rate in metrics.get("neuron_activity", {}).items() if rate == 0.0]
    if silent:
        out.append(f"layer {silent[0]} never fires on the inputs (its spike rate collapses to 0)")
    acc = metrics.get("test_accuracy")
    # chance accuracy flags an import whose semantics nothing binding confirms; where a binding
    # reference agrees, it says the network itself is untrained
    confirmed = any(f.get("binding") and "unavailable" not in f
                    for f in metrics.get("fidelity", []))
    if acc is not None and num_classes and acc <= CHANCE_FACTOR / num_classes and not confirmed:
        out.append(f"it classifies the test set at chance ({acc:.2%}, {num_classes} classes)")
    for f in metrics.get("fidelity", []):
        if not f.get("binding"):
            continue
        if "unavailable" in f:
            out.append(f"its agreement with {f['reference']} could not be measured "
                       f"({f['unavailable']})")
        elif f["prediction_agreement"] < MIN_AGREEMENT:
            out.append(f"it agrees with {f['reference']} on {f['prediction_agreement']:.1%} "
                       f"of predictions (below {MIN_AGREEMENT:.0%})")
    return out


def refuse_unless_accepted(found: list[str], accept: bool) -> None:
    if found and not accept:
        raise UserError(f"the NIR import does not compute the network in the file: "
                        f"{'; '.join(found)}; not imported (--accept-mismatch imports it "
                        "anyway)")


def import_nir(store: Store, path: Path, cfg: ImportConfig, data: DataConfig | None = None,
               ds: Dataset | None = None, seed: int = 0,
               references: Callable[[Path, "nirfile.Imported"], list] | None = None
               ) -> tuple[Artifact, bool]:
    """Import a NIR file as an `import-<id>/` artifact. `references(path, imported)` gives the
    reference simulations to measure the import against (see Reference)."""
    path = Path(path)
    imp = nirfile.load(path, cfg.dt, cfg.convention)
    out = imp.output_shape
    if len(out) != 1:
        raise UserError(f"the NIR graph outputs shape {list(out)}; a classifier needs one value "
                        "per class (end with a Linear/Affine or a neuron after it)")
    shape = imp.input_shape
    if len(shape) == 1 and ds is None and not cfg.input_shape:
        shape = (shape[0],)
    input_shape, num_classes, class_names, mean, std = _io(cfg, ds, shape, out[0])
    if num_classes != out[0]:
        raise UserError(f"the NIR graph outputs {out[0]} values but the data has {num_classes} "
                        "classes")
    ls = list(imp.layers)
    if tuple(input_shape) != tuple(imp.input_shape):
        if int(np.prod(input_shape)) != int(np.prod(imp.input_shape)) or len(imp.input_shape) != 1:
            raise UserError(f"the NIR graph takes input {list(imp.input_shape)}, the data "
                            f"{list(input_shape)}")
        ls.insert(0, nirfile.Layer({"type": "flatten", "start": 1, "end": -1}, {}, "input"))
    described = [l.desc for l in ls]
    spec = ModelSpec(arch="sequential", timesteps=cfg.timesteps, encoding=cfg.encoding,
                     neuron=_first_neuron(described), input_shape=tuple(input_shape),
                     num_classes=num_classes, class_names=class_names, mean=mean, std=std,
                     layers=tuple(described))
    config = {"format": NIR_FORMAT,
              "nir": {"sha256": file_sha256(path), "dt": imp.dt, "convention": imp.convention},
              "model": spec.to_dict(), "seed": seed}
    if ds is not None:
        config["data"] = data_identity(data, ds)

    def compute(job: Job) -> dict:
        torch.manual_seed(seed)
        try:
            ours = spec.build()
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"the NIR graph's layers cannot be built ({type(e).__name__}: "
                            f"{str(e)[:160]})") from None
        names = name_map([str(i) for i in range(len(ls))], layers.split_stem(described))
        sd = {f"{names[str(i)]}.{k}": torch.from_numpy(np.ascontiguousarray(v, np.float32))
              for i, l in enumerate(ls) for k, v in l.tensors.items()}
        try:
            ours.load_state_dict(sd, strict=False)
            x = _probe(ds, input_shape, seed, PROBE)
            with torch.no_grad():
                ours.eval()(x, cfg.timesteps)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"the NIR graph's layers do not fit together "
                            f"({' '.join(str(e).split())[:200]})") from None
        metrics = {"source": "nir", "dt": imp.dt, "convention": imp.convention,
                   "nir_metadata": {k: v for k, v in imp.metadata.items()
                                    if isinstance(v, (str, int, float, bool))},
                   "notes": imp.notes, **_metrics(ours, described, ds, cfg, x)}
        fidelity = []
        xf = _probe(ds, input_shape, seed, FIDELITY_IMAGES)
        with torch.no_grad():
            got = ours.eval()(xf, cfg.timesteps).numpy()
        for name, run, binding in (references(path, imp) if references else []):
            if isinstance(run, str):
                fidelity.append({"reference": name, "unavailable": run, "binding": binding})
                continue
            try:
                ref = run(xf.numpy(), cfg.timesteps)
                entry = agreement(ref, got, name)
                if ds is not None:
                    entry["reference_accuracy"] = _accuracy(ref, ds, len(xf))
            except Exception as e:  # a reference that fails says so; fatal when binding
                entry = {"reference": name, "unavailable": f"{type(e).__name__}: "
                                                           f"{' '.join(str(e).split())[:160]}"}
            entry["binding"] = binding
            fidelity.append(entry)
        metrics["fidelity"] = fidelity
        metrics["neuron_activity"] = _activity(ours, xf, cfg.timesteps)
        metrics["problems"] = problems(metrics, num_classes if ds is not None else None)
        refuse_unless_accepted(metrics["problems"], cfg.accept_mismatch)
        checkpoint.save(job.dir / "model.pt", spec, ours)
        (job.dir / "layers.json").write_text(json.dumps(
            [{"nir_node": l.node, **l.desc} for l in ls], indent=2) + "\n")
        return metrics

    art, cached = store.run("import", config, [], compute)
    if cached:  # imported before with --accept-mismatch: the same checks hold now
        refuse_unless_accepted(art.metrics.get("problems", []), cfg.accept_mismatch)
    return art, cached

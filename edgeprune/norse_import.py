"""Import a Norse model written elsewhere: its Python definition plus its weights.

The user's module (an `nn.Sequential` or Norse `SequentialState` of standard layers and Norse
cells) is converted into a layer list for the "sequential" architecture of edgeprune.models, so
the resulting model.pt is rebuilt by our own code: every later stage (search, retrain, export)
runs without the user's code. The user's weights are copied through a name map, and the rebuilt
network is checked against the user's module stepped T times before anything is written.

Supported leaves: Conv2d, Linear, BatchNorm1d/2d, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d,
Flatten, Dropout, Identity; Norse LIFBoxCell (-> LIF), LICell and LIBoxCell (-> LI). Nested
plain nn.Sequential containers are flattened. LIFCell (a LIF with synaptic current) is refused:
our LIF has none, and exporting a second state variable per spiking layer is not implemented.
A network without a LIFBoxCell is refused: it would not be a spiking network.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import sys
import uuid
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .artifacts import Artifact, Store, artifact_id, sha256_file
from .errors import UserError
from .models import ENCODINGS, ModelSpec, over_time, split_stem
from .neurons import RESETS, LIParams, NeuronParams
from .stages import DataConfig, data_identity
from .training import evaluate

PARITY_TOL = 1e-5
PROBE = 64


# -- loading the user's code and weights -------------------------------------------------------

def load_definition(model_def: str) -> nn.Module:
    """`FILE.py:FUNCTION` -> the module the function returns. The file runs (the user asked for
    that); its folder is on sys.path only while it is imported, so it can import siblings."""
    if ":" not in model_def:
        raise UserError(f"--model-def {model_def!r}: expected FILE.py:FUNCTION")
    file, func = model_def.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise UserError(f"model definition file {path} does not exist")
    name = f"_edgeprune_user_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(folder)
        sys.modules.pop(name, None)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UserError(f"{path} has no function {func!r}")
    try:
        model = fn()
    except Exception as e:
        raise UserError(f"{path}:{func}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{path}:{func}() returned a {type(model).__name__}, not a torch nn.Module")
    return model


def load_weights(path: Path, allow_pickle: bool = False):
    """A state_dict (dict of tensors), or with allow_pickle possibly a whole pickled nn.Module.
    Without allow_pickle only torch's weights-only loader runs: no code in the file executes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"state_dict file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            first = (str(e).strip().splitlines() or ["unsafe content"])[0][:120]
            raise UserError(f"{path} needs unpickling code to load ({first}); it was not "
                            "loaded. Pass --allow-pickle only if you trust the file") from None
        print(f"warning: {path} is unpickled with code execution (--allow-pickle)",
              file=sys.stderr)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise UserError(f"{path} could not be unpickled: {type(e2).__name__}: {e2}") from None
    except Exception as e:
        raise UserError(f"{path} is not a readable torch file ({type(e).__name__})") from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state_dict (a dict of tensors)")
    return obj


# -- converting the module into a layer list ---------------------------------------------------

def _norse_classes() -> dict[str, type]:
    import norse.torch as norse

    return {n: getattr(norse, n) for n in ("SequentialState", "LIFBoxCell", "LICell",
                                            "LIBoxCell", "LIFCell") if hasattr(norse, n)}


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(path, layer) in execution order; nested plain Sequential containers are flattened."""
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            out += _leaves(child, path + ".")
        else:
            out.append((path, child))
    return out


def _f(v) -> float:
    return float(torch.as_tensor(v).item())


def _reset_name(fn) -> str:
    for name, f in RESETS.items():
        if f is fn:
            return name
    raise UserError(f"reset method {getattr(fn, '__name__', fn)} has no equivalent here "
                    "(reset_value or reset_subtract)")


def _lif_box(path: str, m) -> dict:
    p = m.p
    if _f(p.v_leak) != 0.0:
        raise UserError(f"layer {path} (LIFBoxCell) has v_leak {_f(p.v_leak)}; only 0 is supported")
    # Norse multiplies dt * tau_mem_inv in the step; computing the product the same way keeps
    # the rebuilt neuron bit-identical with dt = 1.
    a = _f(m.dt * p.tau_mem_inv)
    try:
        neuron = NeuronParams(tau_mem_inv=a, v_th=_f(p.v_th), v_reset=_f(p.v_reset),
                              reset=_reset_name(p.reset_method), surrogate=str(p.method),
                              alpha=_f(p.alpha))
    except UserError as e:
        raise UserError(f"layer {path} (LIFBoxCell): {e}") from None
    return {"type": "lif", "neuron": neuron.to_dict()}


def _li(path: str, m, box: bool) -> dict:
    p = m.p
    if _f(p.v_leak) != 0.0:
        raise UserError(f"layer {path} ({type(m).__name__}) has v_leak {_f(p.v_leak)}; "
                        "only 0 is supported")
    dt = float(getattr(m, "dt", 1e-3))
    try:
        params = LIParams(_f(dt * p.tau_mem_inv), 1.0 if box else _f(dt * p.tau_syn_inv))
    except UserError as e:
        raise UserError(f"layer {path} ({type(m).__name__}): {e}") from None
    return {"type": "li", **params.to_dict()}


def _pair(v) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def describe(path: str, m: nn.Module) -> dict:
    """The layer-list entry of one user layer; UserError naming it if it is not supported."""
    norse = _norse_classes()
    t = type(m)
    if t is nn.Conv2d:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UserError(f"layer {path} (Conv2d): only zero padding given as numbers is "
                            "supported")
        return {"type": "conv2d", "in": m.in_channels, "out": m.out_channels,
                "kernel": list(m.kernel_size), "stride": list(m.stride),
                "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups,
                "bias": m.bias is not None}
    if t is nn.Linear:
        return {"type": "linear", "in": m.in_features, "out": m.out_features,
                "bias": m.bias is not None}
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not (m.affine and m.track_running_stats):
            raise UserError(f"layer {path} ({t.__name__}): only affine BatchNorm with running "
                            "statistics is supported")
        return {"type": "bn1d" if t is nn.BatchNorm1d else "bn2d", "features": m.num_features,
                "eps": m.eps, "momentum": m.momentum}
    if t is nn.AvgPool2d:
        return {"type": "avgpool2d", "kernel": _pair(m.kernel_size),
                "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override}
    if t is nn.MaxPool2d:
        return {"type": "maxpool2d", "kernel": _pair(m.kernel_size),
                "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                "dilation": _pair(m.dilation), "ceil_mode": m.ceil_mode}
    if t is nn.AdaptiveAvgPool2d:
        return {"type": "adaptiveavgpool2d", "output": _pair(m.output_size)}
    if t is nn.Flatten:
        return {"type": "flatten", "start": m.start_dim, "end": m.end_dim}
    if t is nn.Dropout:
        return {"type": "dropout", "p": m.p}
    if t is nn.Identity:
        return {"type": "identity"}
    if t is norse.get("LIFBoxCell"):
        return _lif_box(path, m)
    if t is norse.get("LICell"):
        return _li(path, m, box=False)
    if t is norse.get("LIBoxCell"):
        return _li(path, m, box=True)
    if t is norse.get("LIFCell"):
        raise UserError(f"layer {path} (LIFCell) is not supported: it has a synaptic current, "
                        "which edgeprune's LIF does not model; use norse LIFBoxCell")
    raise UserError(f"layer {path} ({t.__module__}.{t.__name__}) is not supported: use "
                    "Conv2d, Linear, BatchNorm1d/2d, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, "
                    "Flatten, Dropout, Identity and Norse LIFBoxCell, LICell, LIBoxCell")


def convert(user: nn.Module) -> tuple[list[dict], list[str]]:
    """The layer list of the user's module and the user's path of each entry."""
    norse = _norse_classes()
    if type(user) not in (nn.Sequential, norse.get("SequentialState")):
        raise UserError(f"the model is a {type(user).__module__}.{type(user).__name__}: only "
                        "nn.Sequential or norse SequentialState can be imported")
    leaves = _leaves(user)
    layers = [describe(p, m) for p, m in leaves]
    if not any(d["type"] == "lif" for d in layers):
        raise UserError("the model has no spiking layer (norse LIFBoxCell): nothing to import "
                        "as an SNN")
    return layers, [p for p, _ in leaves]


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


# -- the parity proof --------------------------------------------------------------------------

@torch.no_grad()
def user_steps(user: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The user's module run once per timestep with its state, as Norse users do. A
    SequentialState is called itself; an nn.Sequential (which cannot pass state) is stepped
    child by child with SequentialState's rule (cells get and return their state)."""
    norse = _norse_classes()
    outs, state = [], None
    cells = tuple(c for n, c in norse.items() if n != "SequentialState")
    leaves = [m for _, m in _leaves(user)]
    for x in inputs:
        try:
            if type(user) is norse.get("SequentialState"):
                y, state = user(x, state)
            else:
                state = state or [None] * len(leaves)
                y = x
                for i, m in enumerate(leaves):
                    if isinstance(m, cells):
                        y, state[i] = m(y, state[i])
                    else:
                        y = m(y)
        except Exception as e:
            raise UserError(f"running the user's model failed: {type(e).__name__}: {e}") from None
        outs.append(y)
    return torch.stack(outs)


@torch.no_grad()
def parity(user: nn.Module, ours, x: torch.Tensor, timesteps: int) -> float:
    """Max abs difference of per-step outputs (eval mode) on images x in [0, 1]. Direct: both see
    the normalized image every step; poisson: both see the same seeded input spikes."""
    user.eval()
    ours.eval()
    if ours.encoding == "direct":
        xn = ours.normalize(x)
        ref = user_steps(user, [xn] * timesteps)
        got = ours(x, timesteps)
    else:
        g = torch.Generator().manual_seed(0)
        spikes = (torch.rand((timesteps, *x.shape), generator=g) < x.clamp(0, 1)).float()
        ref = user_steps(user, list(spikes))
        got = ours.body(over_time(ours.stem, spikes))
    if ref.shape != got.shape:
        raise UserError(f"the rebuilt model outputs {list(got.shape)} per run, the user's "
                        f"{list(ref.shape)}")
    return float((ref - got).abs().max())


# -- the stage ---------------------------------------------------------------------------------

def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def import_model(store: Store, model_def: str | None, state_dict: Path, *, timesteps: int = 5,
                 encoding: str = "direct", data_cfg: DataConfig | None = None,
                 input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 allow_pickle: bool = False, seed: int = 0) -> tuple[Artifact, bool]:
    """Import a user's Norse model as an `import-<id>/` artifact. Returns (artifact, cached).

    Input shape and classes come from `data_cfg` (whose test accuracy becomes a metric) or are
    given. mean/std: the normalization the user's model expects (default none: raw [0, 1]
    pixels); it becomes part of the model, like the train stage's."""
    if encoding not in ENCODINGS:
        raise UserError(f"unknown encoding {encoding!r}: choose {', '.join(ENCODINGS)}")
    if timesteps < 1:
        raise UserError(f"timesteps must be at least 1, got {timesteps}")
    state_dict = Path(state_dict)
    weights = load_weights(state_dict, allow_pickle)
    if isinstance(weights, nn.Module):
        user, def_id = weights, None
    else:
        if not model_def:
            raise UserError("--model-def FILE.py:FUNCTION is needed to rebuild the model the "
                            f"state_dict {state_dict} belongs to")
        user = load_definition(model_def)  # checks the file exists before it is hashed
        def_id = _file_sha(Path(model_def.rsplit(":", 1)[0]))
        convert(user)  # an unsupported layer is the clearer error than weights that miss it
        try:
            user.load_state_dict(weights)
        except RuntimeError as e:
            raise UserError(f"the state_dict {state_dict} does not fit the model of "
                            f"{model_def}: {' '.join(str(e).split())[:300]}") from None

    ds = data_cfg.load() if data_cfg is not None else None
    if ds is not None:
        input_shape, num_classes, class_names = ds.input_shape, ds.num_classes, ds.class_names
    elif input_shape is None or num_classes is None:
        raise UserError("give --data, or the input shape and the number of classes")
    else:
        class_names = [str(i) for i in range(num_classes)]
    channels = input_shape[0]
    mean = tuple(mean) if mean else (0.0,) * channels
    std = tuple(std) if std else (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"mean/std need {channels} values (one per input channel)")

    layers, paths = convert(user)
    first_lif = next(d for d in layers if d["type"] == "lif")
    spec = ModelSpec(arch="sequential", timesteps=timesteps, encoding=encoding,
                     neuron=NeuronParams(**first_lif["neuron"]),
                     input_shape=tuple(input_shape), num_classes=num_classes,
                     class_names=tuple(class_names), mean=tuple(mean), std=tuple(std),
                     layers=tuple(layers))
    # The definition is identified by its content and function name, not where the file lies.
    config = {"model_def": {"function": model_def.rsplit(":", 1)[1] if def_id else None,
                            "sha256": def_id},
              "state_dict_sha256": sha256_file(state_dict), "model": spec.to_dict(), "seed": seed}
    if ds is not None:  # absent otherwise: stages read config["data"] as "the model's data"
        config["data"] = data_identity(data_cfg, ds)
    aid = artifact_id("import", config, [])
    found = store.find("import", aid)
    if found:
        return found, True
    store.writable()

    torch.manual_seed(seed)
    ours = spec.build()
    copy_weights(user, ours, paths, split_stem(layers))
    g = torch.Generator().manual_seed(seed)
    x = ds.x_test[:PROBE].float() if ds is not None else \
        torch.rand((PROBE, *input_shape), generator=g)
    diff = parity(user, ours, x, timesteps)
    if not diff < PARITY_TOL:
        raise UserError(f"the rebuilt model differs from yours by {diff:.3g} (max abs, per-step "
                        f"outputs over {timesteps} steps; tolerance {PARITY_TOL}): a layer "
                        "behaves differently from its Norse/PyTorch original; not imported")
    metrics = {"parity_max_abs_diff": diff, "parity_probe": len(x), "layers": len(layers),
               "parameters": sum(p.numel() for p in ours.parameters())}
    if ds is not None:
        ev = evaluate(ours, ds.x_test, ds.y_test, timesteps)
        metrics.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"],
                       spike_rate=ev["spike_rate"], mean_spike_rate=ev["mean_spike_rate"])

    def write(tmp: Path) -> None:
        checkpoint.save(tmp / "model.pt", spec, ours)
        (tmp / "layers.json").write_text(json.dumps(
            [{"user_path": p, **d} for p, d in zip(paths, layers)], indent=2) + "\n")

    return store.write("import", aid, config=config, inputs=[], metrics=metrics,
                       write_files=write), False

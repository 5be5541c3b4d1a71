"""An SNN as a plain program for the sparse C runtime: dicts, lists and float32 numpy arrays.

`program_from_model(model, timesteps)` turns an edgeprune SNN into the intermediate
representation that `export.c_codegen.write_c` compiles to C99. The program holds no torch
objects, so code generation (and anything reading a saved program) runs without PyTorch.

    {"format": "edgeprune.c-program/1",
     "input_shape": [C, H, W], "timesteps": T, "encoding": "direct", "num_classes": K,
     "normalize": {"mean": [...C], "std": [...C]},  # (x - mean[c]) / std[c] on the [0,1] image
     "stem": [op, ...],   # stateless prefix, run ONCE on the normalized image
     "body": [op, ...],   # run at every timestep t = 0..T-1 on the stem's output
     "readout": "sum"}    # logits = sum over t of the body's last output

Ops (every op also has "name": the module path in the PyTorch model, e.g. "body.4"):
    {"kind": "conv2d", "weight": (O,I,kh,kw), "bias": (O,) | None, "stride": [sh,sw],
     "padding": [ph,pw]}                                   # groups = dilation = 1
    {"kind": "linear", "weight": (O,I), "bias": (O,) | None}
      optional on both: "step_bias": (T,O), added at step t on top of "bias" (body ops only);
      a conv2d may have (T,O,OH,OW): per output position (export/compact.py makes these)
    {"kind": "avgpool2d" | "sumpool2d" | "maxpool2d", "kernel": [kh,kw], "stride": [sh,sw]}   # no padding
    {"kind": "flatten"}
    {"kind": "lif", "tau_mem_inv": a, "v_th": th, "v_reset": r, "reset": "value"|"subtract"}
    {"kind": "li", "tau_mem_inv": a, "tau_syn_inv": b}
    {"kind": "cuba_lif", "tau_mem_inv": a, "tau_syn_inv": b, "v_th", "v_reset", "reset"}
    {"kind": "decay_lif", "beta", "threshold", "alpha_syn": None | a, "reset":
     "subtract"|"zero"|"none", "reset_delay": bool}        # snnTorch Leaky / Synaptic
    {"kind": "integrator"}

The model is first prepared with `export.prepare.for_export` (BatchNorm folded into the
conv/linear before it, eval mode). Stateless layers at the start of the body (before its first
neuron) are moved into the stem: with direct encoding they see the same input at every step.
Dropout and Identity are dropped. Anything the C runtime cannot compute is refused with a
UserError naming the layer.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeprune.errors import UserError
from edgeprune.models import SNN, SpikingBasicBlock
from edgeprune.neurons import MODULES, Neuron
from edgeprune.pooling import SumPool2d

from .c_neurons import C_NEURONS
from .c_plan import output_shape
from .compact import StepBiased
from .prepare import NORMS, for_export

FORMAT = "edgeprune.c-program/1"


def _neuron(m: Neuron, name: str) -> dict:
    """A neuron layer's op: its kind and the parameters the kind's C form reads."""
    if m.kind.key not in C_NEURONS:
        raise UserError(f"layer {name} ({type(m).__name__}): the C runtime has no "
                        f"{m.kind.title} neurons")
    p = m.params.to_dict()
    return {"kind": m.kind.key, "name": name, **{k: p[k] for k in C_NEURONS[m.kind.key].keys}}


def _f32(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())


def _pair(v, what: str, name: str) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return [int(v[0]), int(v[1])]
    raise UserError(f"layer {name}: {what} {v!r} is not supported by the C runtime")


def _conv(m: nn.Conv2d, name: str) -> dict:
    if m.groups != 1:
        raise UserError(f"layer {name} (Conv2d): groups={m.groups} is not supported by the C "
                        "runtime (groups=1 only)")
    if tuple(m.dilation) != (1, 1):
        raise UserError(f"layer {name} (Conv2d): dilation={tuple(m.dilation)} is not supported "
                        "by the C runtime (dilation=1 only)")
    if m.padding_mode != "zeros":
        raise UserError(f"layer {name} (Conv2d): padding_mode={m.padding_mode!r} is not "
                        "supported by the C runtime (zeros only)")
    kh, kw = m.kernel_size
    pad = m.padding
    if pad == "valid":
        pad = (0, 0)
    elif pad == "same":
        if tuple(m.stride) != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
            raise UserError(f"layer {name} (Conv2d): padding='same' needs stride 1 and odd "
                            "kernels in the C runtime")
        pad = ((kh - 1) // 2, (kw - 1) // 2)
    return {"kind": "conv2d", "name": name, "weight": _f32(m.weight), "bias": _f32(m.bias),
            "stride": _pair(tuple(m.stride), "stride", name),
            "padding": _pair(tuple(pad), "padding", name)}


def _pool(m: nn.Module, name: str, kind: str) -> dict:
    """An avg/max pooling op (no padding, no ceil mode: the C runtime's windows)."""
    what = type(m).__name__
    pad = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding, m.padding)
    if any(p != 0 for p in pad):
        raise UserError(f"layer {name} ({what}): padding {m.padding} is not supported by the C "
                        "runtime (padding 0 only)")
    if m.ceil_mode:
        raise UserError(f"layer {name} ({what}): ceil_mode is not supported by the C runtime")
    k = _pair(m.kernel_size, "kernel", name)
    return {"kind": kind, "name": name, "kernel": k,
            "stride": _pair(m.stride, "stride", name) if m.stride else k}


def _op(m: nn.Module, name: str, shape: tuple[int, ...]) -> dict | None:
    """One module as an op (None: nothing to compute). `shape` is its input's (C,H,W) or (N,)."""
    if isinstance(m, SpikingBasicBlock):
        raise UserError(f"layer {name} (SpikingBasicBlock): residual blocks are not supported "
                        "by the C runtime; export this model to ONNX instead")
    if isinstance(m, NORMS):
        raise UserError(f"layer {name} ({type(m).__name__}): a BatchNorm that does not directly "
                        "follow a conv/linear cannot be folded, and the C runtime has no "
                        "BatchNorm op")
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return None
    if isinstance(m, StepBiased):  # a compacted layer with a per-step bias
        op = _op(m.layer, name, shape)
        op["step_bias"] = _f32(m.step_bias)
        return op
    if isinstance(m, nn.Conv2d):
        return _conv(m, name)
    if isinstance(m, nn.Linear):
        return {"kind": "linear", "name": name, "weight": _f32(m.weight), "bias": _f32(m.bias)}
    if isinstance(m, SumPool2d):
        return _pool(m, name, "sumpool2d")
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override is not None:
            raise UserError(f"layer {name} (AvgPool2d): divisor_override is not supported by "
                            "the C runtime")
        return _pool(m, name, "avgpool2d")
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.dilation, "dilation", name) != [1, 1] or m.return_indices:
            raise UserError(f"layer {name} (MaxPool2d): dilation/return_indices are not "
                            "supported by the C runtime")
        return _pool(m, name, "maxpool2d")
    if isinstance(m, nn.AdaptiveAvgPool2d):
        out = _pair(m.output_size if not isinstance(m.output_size, int) else m.output_size,
                    "output size", name)
        if len(shape) != 3 or shape[1] % out[0] or shape[2] % out[1]:
            raise UserError(f"layer {name} (AdaptiveAvgPool2d): output {out} does not divide "
                            f"its input {list(shape)}; the C runtime needs equal windows")
        k = [shape[1] // out[0], shape[2] // out[1]]
        return {"kind": "avgpool2d", "name": name, "kernel": k, "stride": k}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UserError(f"layer {name} (Flatten): only start_dim=1, end_dim=-1 is supported "
                            "by the C runtime")
        return {"kind": "flatten", "name": name}
    if isinstance(m, Neuron):
        return _neuron(m, name)
    raise UserError(f"layer {name} ({type(m).__name__}) is not supported by the C runtime "
                    "(conv2d, linear, avg/max pooling, flatten and the neurons "
                    f"{', '.join(MODULES[k].__name__ for k in C_NEURONS)} only)")


def _leaves(module: nn.Module, prefix: str):
    """(name, module) of the layers in order, nested plain nn.Sequential flattened."""
    if isinstance(module, nn.Sequential) and not isinstance(module, SpikingBasicBlock):
        for child_name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{child_name}" if prefix else child_name)
    else:
        yield prefix, module


def _convert(layers, input_shape: list[int]) -> tuple[list, list, list[int]]:
    """(stem ops, body ops, output shape) of the layers fed `input_shape`; ValueError when the
    shapes do not fit, UserError when a layer is not supported."""
    stem, body, seen_neuron = [], [], False
    shape = list(input_shape)
    for name, m in layers:
        op = _op(m, name, tuple(shape))
        if op is None:
            continue
        shape = output_shape(op, shape)
        if op["kind"] in C_NEURONS:
            seen_neuron = True
        (body if seen_neuron else stem).append(op)
    return stem, body, shape


def _guess_input_shape(layers, channels: int) -> list[int]:
    """The smallest square image the layers accept, when a linear layer pins the size."""
    if not any(isinstance(m, nn.Linear) for _, m in layers):
        raise UserError("cannot tell the model's image size (no linear layer pins it): pass "
                        "input_shape=(C, H, W)")
    for s in range(1, 2049):
        try:
            _convert(layers, [channels, s, s])
            return [channels, s, s]
        except ValueError:
            continue
    raise UserError("no square image size up to 2048 fits the model's layers: pass "
                    "input_shape=(C, H, W)")


def program_from_model(model: SNN, timesteps: int, input_shape=None) -> dict:
    """The C-runtime program of `model` run for `timesteps` steps (see the module docstring).

    `input_shape` (C, H, W): the image size the model was built for (its ModelSpec's
    input_shape). When omitted, the smallest square image the layers accept is assumed; that is
    right for edgeprune's own architectures, but an H that only flows into convolutions and
    pools is ambiguous, so callers that have the spec should pass it.
    Raises UserError for anything the C runtime cannot compute, naming the layer."""
    if not isinstance(model, SNN):
        raise UserError(f"the C runtime exports edgeprune SNN models, got {type(model).__name__}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise UserError(f"timesteps must be a positive integer, got {timesteps!r}")
    if model.encoding != "direct":
        raise UserError(f"encoding {model.encoding!r} is not supported by the C runtime "
                        "(direct encoding only)")
    prepared = for_export(model)
    mean = [float(v) for v in prepared.normalize.mean.detach().flatten().to(torch.float32)]
    std = [float(v) for v in prepared.normalize.std.detach().flatten().to(torch.float32)]
    layers = list(_leaves(prepared.stem, "stem")) + list(_leaves(prepared.body, "body"))
    if input_shape is None:
        input_shape = _guess_input_shape(layers, len(mean))
    input_shape = [int(v) for v in input_shape]
    if len(input_shape) != 3 or min(input_shape) < 1 or input_shape[0] != len(mean):
        raise UserError(f"input_shape must be (C, H, W) with C = {len(mean)} (the model's "
                        f"normalization channels), got {input_shape}")
    try:
        stem, body, out = _convert(layers, input_shape)
    except ValueError as e:
        raise UserError(f"the model does not fit an input of shape {input_shape}: {e}") from None
    if not body:
        raise UserError("the model has no neuron layer: nothing for the C runtime to step")
    if len(out) != 1:
        raise UserError(f"the model's last layer ({body[-1]['name']}) gives shape {out}; the C "
                        "runtime needs per-class logits (end with a linear or LI layer)")
    return {"format": FORMAT, "input_shape": input_shape, "timesteps": timesteps,
            "encoding": "direct", "num_classes": int(out[0]),
            "normalize": {"mean": mean, "std": std},
            "stem": stem, "body": body, "readout": "sum"}


def choose_dense_rows(program: dict, threshold: float) -> list[str]:
    """Mark the convolutions whose weights are at least `threshold` dense (non-zero fraction)
    for dense-row storage (export/c_layout.py): updates vectorized across output channels
    (events in the body; every input position of the image in the stem), bigger weights.
    Returns the names marked. threshold > 1 marks none."""
    marked = []
    for op in program["stem"] + program["body"]:
        if op["kind"] == "conv2d" and op["weight"].size and \
                np.count_nonzero(op["weight"]) / op["weight"].size >= threshold:
            op["dense_rows"] = True
            marked.append(op["name"])
    return marked

"""The layer kinds a "sequential" model is built from: one registry entry per kind.

A sequential model (what import-model writes for a user's network) is a JSON-able list of
layer descriptions, `{"type": KIND, ...constructor facts}`, so the network can be rebuilt from
the checkpoint alone. Each kind knows how to build its module from a description and how to
describe a module of its class; adding a layer means adding one entry here (a neuron kind is
one record in edgeprune/neuron_kinds.py, described from there). The exporters keep their own
entry per module class, or per neuron kind, for what they emit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .errors import UserError
from .neuron_kinds import KINDS as NEURON_KINDS
from .neurons import MODULES, Scale, Threshold
from .pooling import AvgPool2d, SumPool2d


@dataclass(frozen=True)
class LayerKind:
    name: str
    module: type  # the class `build` makes and `describe` reads
    build: Callable[[dict], nn.Module]
    describe: Callable[[nn.Module], dict]
    neuron: bool = False  # a stateful neuron layer: where a model's stem ends


def _pair(v) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _tup(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _describe_conv(m: nn.Conv2d) -> dict:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UserError("only zero padding given as numbers is supported")
    return {"in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
            "groups": m.groups, "bias": m.bias is not None}


def _describe_bn(m) -> dict:
    if not (m.affine and m.track_running_stats):
        raise UserError("only affine BatchNorm with running statistics is supported")
    return {"features": m.num_features, "eps": m.eps, "momentum": m.momentum}


def _bn(cls):
    return lambda d: cls(d["features"], eps=d.get("eps", 1e-5), momentum=d.get("momentum", 0.1))


def _build_avg_pool(d: dict) -> nn.Module:
    """An average pool; with divisor 1 (a user's AvgPool2d(divisor_override=1), or an older
    checkpoint's NIR SumPool2d) it is a sum pool, and made one: torch.onnx drops the divisor."""
    k, st, pad = _tup(d["kernel"]), _tup(d["stride"]), _tup(d.get("padding", 0))
    div, ceil = d.get("divisor_override"), d.get("ceil_mode", False)
    if div == 1 and not ceil:
        return SumPool2d(k, st, pad)
    if div is not None:
        raise UserError(f"AvgPool2d with divisor_override={div}"
                        + (" and ceil_mode" if ceil else "") + " is not supported (only "
                        "divisor 1 without ceil_mode: a sum pool)")
    return AvgPool2d(k, st, pad, ceil, d.get("count_include_pad", True))


KINDS: dict[str, LayerKind] = {k.name: k for k in (
    LayerKind("conv2d", nn.Conv2d,
              lambda d: nn.Conv2d(d["in"], d["out"], _tup(d["kernel"]), _tup(d["stride"]),
                                  _tup(d["padding"]), _tup(d.get("dilation", 1)),
                                  d.get("groups", 1), bias=d["bias"]),
              _describe_conv),
    LayerKind("conv1d", nn.Conv1d,
              lambda d: nn.Conv1d(d["in"], d["out"], _tup(d["kernel"]), _tup(d["stride"]),
                                  _tup(d["padding"]), _tup(d.get("dilation", 1)),
                                  d.get("groups", 1), bias=d["bias"]),
              _describe_conv),
    LayerKind("linear", nn.Linear, lambda d: nn.Linear(d["in"], d["out"], bias=d["bias"]),
              lambda m: {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}),
    LayerKind("bn1d", nn.BatchNorm1d, _bn(nn.BatchNorm1d), _describe_bn),
    LayerKind("bn2d", nn.BatchNorm2d, _bn(nn.BatchNorm2d), _describe_bn),
    LayerKind("avgpool2d", AvgPool2d, _build_avg_pool,
              lambda m: {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                         "padding": _pair(m.padding), "ceil_mode": m.ceil_mode,
                         "count_include_pad": m.count_include_pad,
                         "divisor_override": m.divisor_override}),
    LayerKind("sumpool2d", SumPool2d,
              lambda d: SumPool2d(_tup(d["kernel"]), _tup(d["stride"]), _tup(d.get("padding", 0))),
              lambda m: {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                         "padding": _pair(m.padding)}),
    LayerKind("maxpool2d", nn.MaxPool2d,
              lambda d: nn.MaxPool2d(_tup(d["kernel"]), _tup(d["stride"]),
                                     _tup(d.get("padding", 0)), _tup(d.get("dilation", 1)),
                                     ceil_mode=d.get("ceil_mode", False)),
              lambda m: {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                         "padding": _pair(m.padding), "dilation": _pair(m.dilation),
                         "ceil_mode": m.ceil_mode}),
    LayerKind("adaptiveavgpool2d", nn.AdaptiveAvgPool2d,
              lambda d: nn.AdaptiveAvgPool2d(_tup(d["output"])),
              lambda m: {"output": _pair(m.output_size)}),
    LayerKind("flatten", nn.Flatten, lambda d: nn.Flatten(d.get("start", 1), d.get("end", -1)),
              lambda m: {"start": m.start_dim, "end": m.end_dim}),
    LayerKind("dropout", nn.Dropout, lambda d: nn.Dropout(d.get("p", 0.5)), lambda m: {"p": m.p}),
    LayerKind("identity", nn.Identity, lambda d: nn.Identity(), lambda m: {}),
    *(LayerKind(k.key, MODULES[k.key],
                lambda d, k=k: MODULES[k.key](k.from_description(d)),
                lambda m: m.kind.describe(m.params), neuron=True)
      for k in NEURON_KINDS.values()),
    LayerKind("threshold", Threshold, lambda d: Threshold(float(d["threshold"])),
              lambda m: {"threshold": m.threshold}),
    LayerKind("scale", Scale, lambda d: Scale(tuple(d.get("shape", ()))),
              lambda m: {"shape": list(m.scale.shape)}),
)}
BY_MODULE = {k.module: k for k in KINDS.values()}
BY_MODULE[nn.AvgPool2d] = KINDS["avgpool2d"]  # a user's plain pooling is ours with a faster backward


def build(d: dict) -> nn.Module:
    kind = KINDS.get(d.get("type"))
    if kind is None:
        raise UserError(f"unknown layer type {d.get('type')!r} in a sequential model description")
    return kind.build(d)


def describe(m: nn.Module) -> dict | None:
    """The description of a module of a registered class (exactly that class), else None."""
    kind = BY_MODULE.get(type(m))
    return None if kind is None else {"type": kind.name, **kind.describe(m)}


def split_stem(layers) -> int:
    """Index of the first neuron layer: the stem is the stateless prefix before it."""
    for i, d in enumerate(layers):
        if d.get("type") in KINDS and KINDS[d["type"]].neuron:
            return i
    raise UserError("a sequential model needs at least one neuron layer (" +
                    ", ".join(k.name for k in KINDS.values() if k.neuron) + ")")


SUPPORTED = ", ".join(sorted({k.module.__name__ for k in KINDS.values() if not k.neuron}))

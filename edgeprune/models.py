"""SNN architectures on a time-explicit layer protocol.

A network is a stem (the first conv + BN, which for direct encoding sees the static image once)
and a body of layers. Layers without state (conv, BN, pooling, linear) run on all timesteps at
once, folded into the batch; stateful layers (LIF, residual blocks) take the whole sequence
(T, B, ...) in `forward` and offer `step(x, state) -> (y, state)` for one timestep. The same
weights therefore run at any T: what the Early-Time search and the exporters rely on.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from . import layers
from .config import ENCODINGS, ModelConfig, NeuronParams, check_model
from .errors import UserError
from .neurons import LIF, is_spiking, neuron_layer
from .pooling import AvgPool2d


def is_stateful(m: nn.Module) -> bool:
    return getattr(m, "stateful", False)


def over_time(m: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Apply a layer to a sequence: stateful layers see it whole, others fold T into the batch."""
    if is_stateful(m):
        return m(seq)
    return unfold_time(m(seq.flatten(0, 1)), seq.shape[0])


def unfold_time(y: torch.Tensor, timesteps: int) -> torch.Tensor:
    """(T*B, ...) -> (T, B, ...), the batch inferred: a traced graph keeps it dynamic."""
    return y.reshape(timesteps, -1, *y.shape[1:])


class SpikingSequential(nn.Sequential):
    stateful = True

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        for m in self:
            seq = over_time(m, seq)
        return seq

    def step(self, x: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        new = []
        for m, s in zip(self, states):
            if is_stateful(m):
                x, s = m.step(x, s)
            else:
                x = m(x)
            new.append(s)
        return x, new

    def initial_state(self, x: torch.Tensor) -> list:
        states = []
        for m in self:
            if is_stateful(m):
                s = m.initial_state(x)
                x, _ = m.step(x, s)
            else:
                s, x = None, m(x)
            states.append(s)
        return states


class SpikingBasicBlock(nn.Module):
    """ResNet basic block with LIF neurons: lif2(bn2(conv2(lif1(bn1(conv1 x)))) + shortcut(x))."""

    stateful = True
    state_names = ("lif1", "lif2")  # its state is (v1, v2), in this order
    folds = (("conv1", "bn1"), ("conv2", "bn2"))  # BatchNorms an exporter may fold

    def __init__(self, cin: int, cout: int, stride: int, neuron: NeuronParams):
        super().__init__()
        if neuron.tau_syn_inv is not None:
            raise UserError("resnet19's residual blocks use the box LIF only: leave "
                            "--tau-syn-inv unset")
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.lif1 = LIF(neuron)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.lif2 = LIF(neuron)

    def _residual(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(h)) + self.shortcut(x)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h = self.lif1(over_time(nn.Sequential(self.conv1, self.bn1), seq))
        pre = self._residual(h.flatten(0, 1), seq.flatten(0, 1))
        return self.lif2(unfold_time(pre, seq.shape[0]))

    def step(self, x: torch.Tensor, state):
        v1, v2 = state
        h, v1 = self.lif1.step(self.bn1(self.conv1(x)), v1)
        z, v2 = self.lif2.step(self._residual(h, x), v2)
        return z, (v1, v2)

    def initial_state(self, x: torch.Tensor):
        a = self.bn1(self.conv1(x))
        return (torch.zeros_like(a), torch.zeros_like(self._residual(torch.zeros_like(a), x)))


def poisson_spikes(x: torch.Tensor, timesteps: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Rate encoding: (T, B, C, H, W) spikes, 1 with probability = pixel in [0, 1]. Training
    draws from the global RNG (on x's device); probes pass a seeded CPU generator."""
    u = torch.rand((timesteps, *x.shape), generator=generator, device=x.device)
    return (u < x.clamp(0, 1)).float()


class Normalize(nn.Module):
    """Fixed per-channel normalization, part of the model so devices feed raw [0, 1] pixels."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return (x - self.mean) / self.std
        # other inputs (B, C, ...) (an imported Conv1d or flat model): channel axis 1
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class SNN(nn.Module):
    """stem + body, run for `timesteps` steps; returns per-step logits (T, B, classes)."""

    def __init__(self, normalize: Normalize, stem: nn.Module, body: SpikingSequential,
                 encoding: str = "direct"):
        super().__init__()
        if encoding not in ENCODINGS:
            raise UserError(f"unknown encoding {encoding!r}: choose {', '.join(ENCODINGS)}")
        self.normalize, self.stem, self.body, self.encoding = normalize, stem, body, encoding

    def encode(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] to the stem's output sequence (T, B, ...)."""
        if self.encoding == "direct":
            s = self.stem(self.normalize(x))  # the static image is seen once
            # -1, not s.shape: a traced graph keeps the batch dynamic
            return s.unsqueeze(0).expand(timesteps, *([-1] * s.dim()))
        return over_time(self.stem, poisson_spikes(x, timesteps))

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        if timesteps < 1:
            raise UserError(f"timesteps must be at least 1, got {timesteps}")
        return self.body(self.encode(x, timesteps))

    def forward_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """Per-step logits for given input spikes (T, B, C, H, W): poisson encoding with the
        spikes drawn elsewhere (a reference run must see the spikes a device saw)."""
        return self.body(over_time(self.stem, spikes))

    def step(self, x_t: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        """One timestep: for direct encoding x_t is the image, for poisson the input spikes."""
        s = self.stem(self.normalize(x_t) if self.encoding == "direct" else x_t)
        return self.body.step(s, states)

    def initial_state(self, x_t: torch.Tensor) -> list:
        s = self.stem(self.normalize(x_t) if self.encoding == "direct" else x_t)
        return self.body.initial_state(s)


# -- architectures ---------------------------------------------------------------------------

def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _pool(kind: str) -> nn.Module:
    return AvgPool2d(2) if kind == "avg" else nn.MaxPool2d(2)


def _features(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.zeros(2, *shape)).shape[1:])


def _stem(cin: int, cout: int, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=bias), nn.BatchNorm2d(cout))


def convnet(input_shape, num_classes, neuron, width=1.0, pool="avg", hidden=128) -> tuple:
    """A small conv SNN for CPUs: conv16-pool-conv32-pool-fc128-fc (channels x width). The
    hidden linear layer has BatchNorm like the convs, so its neurons fire from the first step
    (without it the readout sees no spikes for the first epochs)."""
    c1, c2, h = _ch(16, width), _ch(32, width), _ch(hidden, width)
    stem = _stem(input_shape[0], c1)
    convs = nn.Sequential(neuron_layer(neuron), _pool(pool), nn.Conv2d(c1, c2, 3, 1, 1, bias=False),
                          nn.BatchNorm2d(c2), neuron_layer(neuron), _pool(pool), nn.Flatten())
    n = math.prod(_features(_plain(convs), _features(stem, input_shape)))
    body = SpikingSequential(*convs, nn.Linear(n, h, bias=False), nn.BatchNorm1d(h),
                             neuron_layer(neuron), nn.Linear(h, num_classes))
    return stem, body


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(input_shape, num_classes, neuron, width=1.0, pool="avg") -> tuple:
    """VGG16 as in Kim et al.: 13 conv+BN+LIF layers, pooling, one linear classifier.
    A pooling layer is skipped once the feature map is 1 pixel wide (small inputs)."""
    cin, size = input_shape[0], min(input_shape[1:])
    stem, layers, first = None, [], True
    for v in VGG16_CFG:
        if v == "M":
            if size >= 2:
                layers.append(_pool(pool))
                size //= 2
            continue
        c = _ch(v, width)
        if first:  # the stem is the first conv + BN; its LIF opens the body
            stem, first = _stem(cin, c, bias=True), False
        else:
            layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=True), nn.BatchNorm2d(c)]
        layers.append(neuron_layer(neuron))
        cin = c
    layers.append(nn.Flatten())
    n = math.prod(_features(_plain(nn.Sequential(*layers)), _features(stem, input_shape)))
    return stem, SpikingSequential(*layers, nn.Linear(n, num_classes))


def resnet19(input_shape, num_classes, neuron, width=1.0, pool="avg") -> tuple:
    """ResNet19 as in Kim et al.: stem 64, stages 128x3, 256x3, 512x2 (stride 2 each),
    global average pooling, fc 256 + LIF, fc classes."""
    stem = _stem(input_shape[0], _ch(64, width))
    layers: list[nn.Module] = [LIF(neuron)]
    cin = _ch(64, width)
    for planes, blocks in ((128, 3), (256, 3), (512, 2)):
        c = _ch(planes, width)
        for i in range(blocks):
            layers.append(SpikingBasicBlock(cin, c, 2 if i == 0 else 1, neuron))
            cin = c
    h = _ch(256, width)
    # BN before the hidden LIF (not in the paper; no prunable weights): without it that layer
    # stayed silent in short runs, as convnet's did.
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, h, bias=False),
               nn.BatchNorm1d(h), LIF(neuron), nn.Linear(h, num_classes)]
    return stem, SpikingSequential(*layers)


def _plain(seq: nn.Sequential) -> nn.Sequential:
    """The same layers without neurons, for shape inference only."""
    return nn.Sequential(*[m for m in seq if not getattr(m, "stateful", False)])


def sequential(input_shape, num_classes, neuron, width=1.0, pool="avg", layers_=()) -> tuple:
    """Rebuild a layer list (edgeprune.layers): (stem, body). `neuron`, `width` and `pool` are
    not used: every layer's description carries its own facts."""
    if not layers_:
        raise UserError("architecture 'sequential' needs a layer list (made by import-model)")
    k = layers.split_stem(layers_)
    return (nn.Sequential(*[layers.build(d) for d in layers_[:k]]),
            SpikingSequential(*[layers.build(d) for d in layers_[k:]]))


SMALL_INPUT_PIXELS = 16 * 16


def default_width(arch: str, input_shape: tuple[int, ...]) -> float:
    """The width used when none is given: 2 for convnet on small images (at most 16×16 pixels,
    e.g. the 8×8 digits), else 1. At width 1 on 8×8 the convnet has 22k prunable weights and a
    97%-sparse ticket keeps ~670 of them, too few to train to the dense accuracy (−3.9 points;
    benchmarks/results/ticket-defaults); width 2 (87k weights) keeps it within a point for
    about 2.5× the training time. Larger images already give the convnet ~10× the weights."""
    if arch == "convnet" and input_shape[-1] * input_shape[-2] <= SMALL_INPUT_PIXELS:
        return 2.0
    return 1.0


# Bumped when an architecture's layers change, so artifacts trained on the old layout get new
# ids instead of being found as cache hits that no longer load.
ARCH_REVISION = {"convnet": 2, "vgg16": 1, "resnet19": 2, "sequential": 1}

ARCHS: dict[str, Callable] = {"convnet": convnet, "vgg16": vgg16, "resnet19": resnet19,
                              "sequential": sequential}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network without the user's code."""

    arch: str = "convnet"
    width: float = 1.0
    pool: str = "avg"
    timesteps: int = 5
    encoding: str = "direct"
    neuron: NeuronParams = field(default_factory=NeuronParams)
    input_shape: tuple[int, ...] = (1, 8, 8)
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layers: tuple = ()  # "sequential" only: the layer list (dicts) the network is rebuilt from

    def __post_init__(self):
        check_model(self.arch, tuple(ARCHS), self.width, self.pool, self.timesteps, self.encoding)

    @classmethod
    def for_data(cls, cfg: ModelConfig, ds) -> "ModelSpec":
        """The spec of a model of `cfg` for dataset `ds` (its shape, classes, normalization)."""
        mean, std = ds.channel_stats()
        width = cfg.width if cfg.width is not None else default_width(cfg.arch, ds.input_shape)
        return cls(arch=cfg.arch, width=width, pool=cfg.pool, timesteps=cfg.timesteps,
                   encoding=cfg.encoding, neuron=cfg.neuron, input_shape=tuple(ds.input_shape),
                   num_classes=ds.num_classes, class_names=tuple(ds.class_names),
                   mean=tuple(mean), std=tuple(std))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"], d["class_names"] = list(self.input_shape), list(self.class_names)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["neuron"] = self.neuron.to_dict()
        if self.layers:
            d["layers"] = [dict(x) for x in self.layers]
        else:  # specs of the built-in archs (and the ids hashed from them) stay as they were
            del d["layers"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["neuron"] = NeuronParams(**d["neuron"])
        for k in ("input_shape", "class_names", "mean", "std"):
            d[k] = tuple(d[k])
        d["layers"] = tuple(dict(x) for x in d.get("layers", ()))
        return cls(**d)

    def build(self) -> SNN:
        extra = {"layers_": self.layers} if self.arch == "sequential" else {}
        stem, body = ARCHS[self.arch](self.input_shape, self.num_classes, self.neuron,
                                      width=self.width, pool=self.pool, **extra)
        return SNN(Normalize(list(self.mean), list(self.std)), stem, body, self.encoding)


PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights a ticket prunes: every conv and linear weight, by parameter name."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
            if isinstance(m, PRUNABLE)}


def spiking_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer whose output is spikes (each neuron kind says so: `spiking`)."""
    return {name: m for name, m in model.named_modules() if is_spiking(m)}

"""Make an inference copy of an SNN for export: BatchNorm folded, spikes as a plain comparison.

Folding turns conv -> BN into one conv with scaled weights and a bias, so the exported graph (and
the NIR graph, which has no BatchNorm node) computes y = w'x + b' directly. The fold is done in
float64 and rounded once, which keeps the folded layer within ~1 ulp of conv-then-BN.
BN layers are replaced by `nn.Identity` (not removed) so that module names, and with them the
names of the LIF layers in spike-count outputs, stay those of the original model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold an eval-mode BatchNorm into the conv/linear layer that feeds it (in place)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = layer.weight.double() * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    b = (b - bn.running_mean.double()) * scale + bn.bias.double()
    layer.weight.copy_(w.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(b.to(layer.weight.dtype), requires_grad=False)
    else:
        layer.bias.copy_(b.to(layer.bias.dtype))


def _fold_sequential(seq: nn.Sequential) -> None:
    children = list(seq)
    for i in range(len(children) - 1):
        if isinstance(children[i], FOLDABLE) and isinstance(children[i + 1], NORMS):
            fold_into(children[i], children[i + 1])
            seq[i + 1] = nn.Identity()


def _fold_tree(module: nn.Module) -> None:
    if isinstance(module, nn.Sequential):
        _fold_sequential(module)
    for conv, bn in getattr(module, "folds", ()):  # pairs a layer declares (a residual block)
        if isinstance(getattr(module, bn), NORMS):
            fold_into(getattr(module, conv), getattr(module, bn))
            setattr(module, bn, nn.Identity())
    for child in module.children():
        _fold_tree(child)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every BN that directly follows a conv/linear folded.
    A BN elsewhere is left in place (still correct: ONNX exports it as BatchNormalization)."""
    folded = copy.deepcopy(model).eval()
    _fold_tree(folded)
    return folded


def for_export(model: nn.Module) -> nn.Module:
    """The copy that exporters trace: eval mode, BN folded, no gradients, exact Heaviside spikes
    (the surrogate's autograd Function would otherwise appear in the traced graph)."""
    m = fold_batchnorm(model)
    for mod in m.modules():
        if hasattr(mod, "spike_exactly"):  # every spiking layer kind
            mod.spike_exactly()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def unfolded_norms(model: nn.Module) -> list[str]:
    """Names of BatchNorm layers that folding could not remove."""
    return [n for n, m in model.named_modules() if isinstance(m, NORMS)]

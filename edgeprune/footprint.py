"""How much memory training a model will take, estimated before any work, so that an absurd
option (`--timesteps 100000`, `--width 1000`) is one line instead of a failed allocation.

The estimate is a floor, not a promise: weights with their gradient, SGD momentum, mask and a
checkpoint copy, plus what autograd keeps of the activations of one batch over T steps.
Measured on the convnet, VGG16 and ResNet19 (CPU, fp32), one training step's peak grew by
1.5–1.9× the activations' bytes; 1.5 is used, so a refusal means the run could not have fit.

The network is probed at width ≤ 1, never at the asked width (which could be the allocation
that fails): every architecture's width multiplies its channels, so activations grow with the
width and weights with its square. That overstates only the first and last layers, which are
linear in the width.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import UserError
from .models import ModelSpec

BYTES = 4  # fp32: mixed precision keeps weights, gradients and membrane potentials in fp32
WEIGHT_COPIES = 5  # weight, gradient, momentum, mask, checkpoint bytes
ACTIVATION_FACTOR = 1.5  # measured floor of autograd's saved tensors over the outputs' bytes


@dataclass(frozen=True)
class Footprint:
    weights: int  # parameters
    activations: int  # values a forward pass outputs per image and timestep, all layers

    def training_bytes(self, batch: int, timesteps: int) -> int:
        return int(self.weights * WEIGHT_COPIES * BYTES
                   + self.activations * batch * timesteps * BYTES * ACTIVATION_FACTOR)


def footprint(spec: ModelSpec) -> Footprint:
    """Weights and per-step activations of `spec`'s network, from a probe at width ≤ 1."""
    scale = spec.width if spec.arch != "sequential" and spec.width > 1 else 1.0
    net = replace(spec, width=spec.width / scale).build().eval()
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(
        out.numel() if torch.is_tensor(out) else 0))
        for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.zeros((1, *spec.input_shape)), 1)
    for h in hooks:
        h.remove()
    weights = sum(p.numel() for p in net.parameters())
    return Footprint(weights=int(weights * scale * scale), activations=int(sum(sizes) * scale))


def available_bytes(device: str = "cpu") -> int | None:
    """Memory this process may still take: free GPU memory for a CUDA device, else the least
    of the kernel's MemAvailable, the cgroup's limit and this process's address-space limit."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text != "max":
            limits.append(int(text))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - _mapped_bytes()))
    return min(limits) if limits else None


def _mapped_bytes() -> int:
    """This process's address space in use (what RLIMIT_AS counts)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_training(spec: ModelSpec, batch: int, device: str = "cpu") -> None:
    """Refuse, before any work, a training run whose estimate exceeds the memory there is."""
    need = footprint(spec).training_bytes(batch, spec.timesteps)
    have = available_bytes(device)
    if have is not None and need > have:
        raise UserError(f"this needs ~{_gb(need)} of memory (width {spec.width:g}, T "
                        f"{spec.timesteps}, batch {batch}); this machine has {_gb(have)} "
                        f"{'free on ' + device if device.startswith('cuda') else 'available'}: "
                        "lower --width, --timesteps or --batch-size")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"

"""Average pooling whose training backward skips the zero-fill: for windows that tile the
input (stride = kernel, no padding), each input's gradient is its window's output gradient
divided by the window area, written in one pass. Same forward, same gradients; other
configurations and inference use PyTorch's own."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _TiledAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int) -> torch.Tensor:
        ctx.shape, ctx.k = x.shape, k
        ctx.channels_last = x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last)
        return F.avg_pool2d(x, k)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        n, c, h, w = ctx.shape
        k = ctx.k
        g = g * (1.0 / (k * k))
        oh, ow = h // k, w // k
        if ctx.channels_last:  # expand in memory order, so the result stays channels-last
            gp = g.permute(0, 2, 3, 1)[:, :, None, :, None, :]
            out = gp.expand(n, oh, k, ow, k, c).reshape(n, oh * k, ow * k, c).permute(0, 3, 1, 2)
        else:
            out = g[:, :, :, None, :, None].expand(n, c, oh, k, ow, k).reshape(n, c, oh * k,
                                                                                ow * k)
        if (oh * k, ow * k) != (h, w):  # rows/columns the windows never covered get nothing
            out = F.pad(out, (0, w - ow * k, 0, h - oh * k))
        return out, None


class AvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d with the faster backward when its windows tile the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        tiled = (isinstance(k, int) and self.stride in (k, (k, k), None) and self.padding in (0, (0, 0))
                 and not self.ceil_mode and self.divisor_override is None and x.dim() == 4)
        if tiled and x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return _TiledAvgPool.apply(x, k)
        return super().forward(x)

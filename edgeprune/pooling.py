"""Our pooling layers: average pooling whose training backward skips the zero-fill (for
windows that tile the input, stride = kernel and no padding, each input's gradient is its
window's output gradient divided by the window area, written in one pass; same forward, same
gradients; other configurations and inference use PyTorch's own), and sum pooling, exact in
every export."""
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


class SumPool2d(nn.AvgPool2d):
    """Sum pooling (Sinabs' SumPool2d; a NIR SumPool2d without a Scale after it): each window's
    sum. PyTorch computes it as avg_pool2d with divisor 1, but torch.onnx drops that divisor
    (the graph would average), so an ONNX export adds the window's strided slices instead, in
    PyTorch's row-major order: the same sum, bit for bit."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding, divisor_override=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw) = (_pair(v) for v in (self.kernel_size,
                                                          self.stride or self.kernel_size,
                                                          self.padding))
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        oh, ow = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        s = None
        for ky in range(kh):
            for kx in range(kw):
                v = x[..., ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
                s = v if s is None else s + v
        return s


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

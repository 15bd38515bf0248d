"""`input_norm: rms` of hadamard and heat: queries and keys divided by their root mean square
over a head's channels, per position, before the bound (`HadamardSpec.input_norm`).

The eager paths call `normalised`; the fused CPU HEAT kernels do the same inside their passes
(`csrc/input_norm.cpp`, `cpu_kernels`), with the same epsilon.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

RMS_EPS = 1e-6
"""x / sqrt(mean(x^2) + RMS_EPS)."""


def normalised(x: Tensor, input_norm: str) -> Tensor:
    """x (..., d) as `input_norm` says: 'rms' divides each position's vector by its root mean
    square over the d channels (a zero vector stays zero); 'none' returns x."""
    if input_norm == "none":
        return x
    return _RmsNormalised.apply(x)


class _RmsNormalised(torch.autograd.Function):
    """y = x / sqrt(mean(x^2) + eps) over the last dim, with the backward written out,
    dx = (g - y mean(g y)) / sqrt(mean(x^2) + eps): 2.9x faster than autograd's for a
    (1, 8, 4096, 64) float32 forward+backward on this project's CPU (8.5 against 24.6 ms)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()
        scale = mean_square.div_(x.shape[-1]).add_(RMS_EPS).rsqrt_()
        y = x * scale
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        y, scale = ctx.saved_tensors
        dot = (grad * y).mean(dim=-1, keepdim=True)
        return torch.addcmul(grad, y, dot, value=-1.0).mul_(scale)

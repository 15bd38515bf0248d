"""Non-causal Taylor-softmax attention of order <= 2 without materialising (n, D_p) features.

T_2(x.y) = 1 + x.y + (x.y)^2 / 2, and (x.y)^2 = vec(x x^T) . vec(y y^T). With values
u_j = [v_j, 1] (the last column gives the normaliser), the key side reduces to three moments

    S0 = sum_j u_j  (1 x (d+1)),   S1 = sum_j y_j u_j^T  (f x (d+1)),
    S2 = 1/2 sum_j vec(y_j y_j^T) u_j^T  (f^2 x (d+1), symmetric in its two channel indices),

and each query to  mixed_i = S0 + x_i S1 + vec(x_i x_i^T) S2,  out_i = mixed_i[:d] / mixed_i[d]
(order 1 drops S2). Only S2 needs the f^2 outer products: they are rebuilt chunk by chunk with
one broadcast multiply (no concatenated feature vector), so memory is O(chunk x f^2 + f^2 x d)
per (batch, head) instead of the O(n x D_p) autograd would keep. The backward is written by
hand: the forward's output and normaliser are kept (O(n d)), so no query-side product is
recomputed, and the symmetry of S2 and of its gradient turns each channel gradient into one
matrix-vector product per position. Cost O(n f^2 d) multiply-adds in 6 matrix products (2
forward, 4 backward): it beats softmax's O(n^2 d) only for n well above f^2 (see the README's
benchmarks; `feature_dim` projects q and k down to a smaller f first).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from heat.attention.linear import NORMALISER_EPS

SQRT_HALF = math.sqrt(0.5)
CHUNK_ELEMENTS = 1 << 20
"""Outer-product entries per chunk across the batch and heads (4 MiB in fp32, about one core's
L2 cache): measured on 2 cores at n = 8192, f = 32, 16M entries per chunk ran 3x slower."""


def features(x: Tensor, order: int) -> Tensor:
    """phi(x): (..., C, f) -> (..., C, 1 + f [+ f^2]), with phi(x) . phi(y) = T_order(x . y).
    The fast path never builds it; the tests check the moments against it."""
    parts = [torch.ones_like(x[..., :1]), x]
    if order >= 2:
        parts.append(_outer(x) * SQRT_HALF)
    return torch.cat(parts, dim=-1)


def _outer(x: Tensor) -> Tensor:
    """(..., C, f) -> (..., C, f^2): vec(x x^T) per position."""
    return (x[..., :, None] * x[..., None, :]).flatten(-2)


def _symmetric_matvec(m: Tensor, x: Tensor) -> Tensor:
    """(..., C, f^2) symmetric f x f matrices times (..., C, f) vectors -> (..., C, f)."""
    f = x.shape[-1]
    return (m.unflatten(-1, (f, f)) @ x[..., None]).squeeze(-1)


def _chunk(x: Tensor) -> int:
    f = x.shape[-1]
    rows = math.prod(x.shape[:-2])
    return max(16, CHUNK_ELEMENTS // (f * f * rows))


def _spans(length: int, chunk: int):
    return [slice(start, start + chunk) for start in range(0, length, chunk)]


class _TaylorNonCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, v, valid, order: int):
        # [v, 1] with padded keys zeroed: they then add nothing to numerator or normaliser
        values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        if valid is not None:
            values = values * valid[:, None, :, None].to(v.dtype)
        s1 = y.transpose(-1, -2) @ values  # (.., f, d+1)
        mixed = values.sum(-2, keepdim=True) + x @ s1  # (.., n, d+1)
        s2 = None
        if order >= 2:
            chunk = _chunk(x)
            s2 = sum(_outer(y[..., span, :]).transpose(-1, -2) @ values[..., span, :]
                     for span in _spans(y.shape[-2], chunk)) * 0.5  # (.., f^2, d+1)
            for span in _spans(x.shape[-2], chunk):
                mixed[..., span, :] += _outer(x[..., span, :]) @ s2
        normaliser = mixed[..., -1:]
        denominator = normaliser.clamp_min(NORMALISER_EPS)
        out = mixed[..., :-1] / denominator
        # where the normaliser was clamped it is a constant: no gradient flows through it
        denominator = torch.where(normaliser > NORMALISER_EPS, denominator, -denominator)
        ctx.save_for_backward(x, y, values, valid, s1, s2, out, denominator)
        ctx.order = order
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, values, valid, s1, s2, out, denominator = ctx.saved_tensors
        kept = denominator > 0
        denominator = denominator.abs()
        # d loss / d mixed: the numerator's columns, then the normaliser's
        grad_mixed = torch.cat(
            [grad / denominator, -(grad * out).sum(-1, keepdim=True) / denominator * kept], dim=-1
        )
        grad_s1 = x.transpose(-1, -2) @ grad_mixed
        grad_x = grad_mixed @ s1.transpose(-1, -2)
        # d loss / d u_j = grad_s0 + y_j grad_s1 [+ vec(y_j y_j^T) grad_s2 / 2]
        grad_values = grad_mixed.sum(-2, keepdim=True) + y @ grad_s1
        grad_y = values @ grad_s1.transpose(-1, -2)
        if ctx.order >= 2:
            chunk = _chunk(x)
            grad_s2 = torch.zeros_like(s2)
            for span in _spans(x.shape[-2], chunk):
                xs, gs = x[..., span, :], grad_mixed[..., span, :]
                grad_s2 += _outer(xs).transpose(-1, -2) @ gs
                # d/dx of vec(x x^T) S2 g = 2 M x, M = (S2 g) as a symmetric f x f matrix
                grad_x[..., span, :] += 2 * _symmetric_matvec(gs @ s2.transpose(-1, -2), xs)
            grad_s2 *= 0.5  # S2 = R / 2, R = sum_j vec(y_j y_j^T) u_j^T
            for span in _spans(y.shape[-2], chunk):
                ys, us = y[..., span, :], values[..., span, :]
                grad_values[..., span, :] += _outer(ys) @ grad_s2
                grad_y[..., span, :] += 2 * _symmetric_matvec(us @ grad_s2.transpose(-1, -2), ys)
        grad_v = grad_values[..., :-1]
        if valid is not None:
            valid = valid[:, None, :, None].to(grad_v.dtype)
            grad_v, grad_y = grad_v * valid, grad_y * valid
        return grad_x, grad_y, grad_v, None, None


def taylor_noncausal(
    x: Tensor, y: Tensor, v: Tensor, *, order: int, key_valid: Tensor | None
) -> Tensor:
    """x (B, H, n, f) and y (B, H, m, f) already scaled by sqrt(tau); v (B, H, m, d); key_valid
    (B, m) bool or None. -> (B, H, n, d)."""
    if order > 2:
        raise ValueError(f"the chunked Taylor path handles order <= 2, got {order}")
    return _TaylorNonCausal.apply(x, y, v, key_valid, order)

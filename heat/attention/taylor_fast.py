"""Non-causal Taylor-softmax attention of order <= 2 without materialising (n, D_p) features.

phi(x) = [1, x, vec(x x^T) / sqrt(2)] has phi(x) . phi(y) = 1 + x.y + (x.y)^2 / 2, the order-2
Taylor polynomial of exp(x.y) (order 1 drops the last block). The full Kronecker block (f^2
entries, not the f(f+1)/2 multisets of `taylor.py`) turns every step into a plain matmul.

    S = sum_j phi(y_j) [v_j, 1]^T   (F x (d+1)): numerator and normaliser in one product
    out_i = (phi(x_i) S)[:d] / max((phi(x_i) S)[d], eps)

Keys and queries are processed in chunks whose features are rebuilt on the fly, and the
backward is written by hand (recomputing each chunk's features), so memory is O(chunk x F +
F x d) per (batch, head) instead of the O(n x F) autograd would keep. Cost O(n F d): with
F = f^2 this beats softmax's O(n^2 d) only for n well above f^2 / 2 (see the README's
benchmarks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from heat.attention.linear import NORMALISER_EPS

SQRT_HALF = math.sqrt(0.5)
CHUNK_ELEMENTS = 1 << 24
"""Features per chunk across the batch and heads (64 MiB in fp32): bounds the working memory."""


def features(x: Tensor, order: int) -> Tensor:
    """phi(x): (..., C, f) -> (..., C, 1 + f [+ f^2])."""
    parts = [torch.ones_like(x[..., :1]), x]
    if order >= 2:
        parts.append((x[..., :, None] * x[..., None, :]).flatten(-2) * SQRT_HALF)
    return torch.cat(parts, dim=-1)


def features_backward(x: Tensor, grad_phi: Tensor, order: int) -> Tensor:
    """d loss / d x from d loss / d phi(x)."""
    f = x.shape[-1]
    grad = grad_phi[..., 1 : 1 + f]
    if order >= 2:
        m = grad_phi[..., 1 + f :].unflatten(-1, (f, f))  # d/d(x_a x_b) / sqrt(2)
        grad = grad + SQRT_HALF * ((m + m.transpose(-1, -2)) @ x[..., None]).squeeze(-1)
    return grad


def _chunk(x: Tensor, order: int) -> int:
    f = x.shape[-1]
    width = 1 + f + (f * f if order >= 2 else 0)
    rows = math.prod(x.shape[:-2])
    return max(16, CHUNK_ELEMENTS // (width * rows))


class _TaylorNonCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, v, valid, order: int):
        # [v, 1] with padded keys zeroed: they then add nothing to numerator or normaliser
        values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        if valid is not None:
            values = values * valid[:, None, :, None].to(v.dtype)
        chunk = _chunk(x, order)
        state = None
        for start in range(0, y.shape[-2], chunk):
            part = features(y[..., start : start + chunk, :], order).transpose(-1, -2) @ (
                values[..., start : start + chunk, :])
            state = part if state is None else state + part
        outputs = []
        for start in range(0, x.shape[-2], chunk):
            mixed = features(x[..., start : start + chunk, :], order) @ state  # (.., C, d+1)
            outputs.append(mixed[..., :-1] / mixed[..., -1:].clamp_min(NORMALISER_EPS))
        ctx.save_for_backward(x, y, values, valid, state)
        ctx.order, ctx.chunk = order, chunk
        return torch.cat(outputs, dim=-2)

    @staticmethod
    def backward(ctx, grad):
        x, y, values, valid, state = ctx.saved_tensors
        order, chunk = ctx.order, ctx.chunk
        grad_state = torch.zeros_like(state)
        grad_x = []
        for start in range(0, x.shape[-2], chunk):
            phi = features(x[..., start : start + chunk, :], order)
            mixed = phi @ state
            normaliser = mixed[..., -1:]
            kept = normaliser > NORMALISER_EPS
            denominator = normaliser.clamp_min(NORMALISER_EPS)
            out = mixed[..., :-1] / denominator
            g = grad[..., start : start + chunk, :]
            grad_mixed = torch.cat(
                [g / denominator, -(g * out).sum(-1, keepdim=True) / denominator * kept], dim=-1
            )
            grad_state += phi.transpose(-1, -2) @ grad_mixed
            grad_x.append(features_backward(
                x[..., start : start + chunk, :], grad_mixed @ state.transpose(-1, -2), order))
        grad_y, grad_v = [], []
        for start in range(0, y.shape[-2], chunk):
            part = values[..., start : start + chunk, :]
            phi = features(y[..., start : start + chunk, :], order)
            grad_y.append(features_backward(
                y[..., start : start + chunk, :], part @ grad_state.transpose(-1, -2), order))
            grad_v.append((phi @ grad_state)[..., :-1])
        grad_v = torch.cat(grad_v, dim=-2)
        if valid is not None:
            grad_v = grad_v * valid[:, None, :, None].to(grad_v.dtype)
        return torch.cat(grad_x, dim=-2), torch.cat(grad_y, dim=-2), grad_v, None, None


def taylor_noncausal(
    x: Tensor, y: Tensor, v: Tensor, *, order: int, key_valid: Tensor | None
) -> Tensor:
    """x (B, H, n, f) and y (B, H, m, f) already scaled by sqrt(tau); v (B, H, m, d); key_valid
    (B, m) bool or None. -> (B, H, n, d)."""
    if order > 2:
        raise ValueError(f"the chunked Taylor path handles order <= 2, got {order}")
    return _TaylorNonCausal.apply(x, y, v, key_valid, order)

"""Taylor-softmax attention of order <= 2 without materialising (n, D_p) features.

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

Causal (`taylor_causal`): the same moments, accumulated chunk by chunk, serve the earlier chunks'
keys; inside a chunk the masked C x C kernel T(x_i . y_j) is applied directly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from heat.attention.linear import NORMALISER_EPS

SQRT_HALF = math.sqrt(0.5)
CHUNK_ELEMENTS = 1 << 20
"""Outer-product entries per chunk across the batch and heads on the CPU (4 MiB in fp32, about
one core's L2 cache): measured on 2 cores at n = 8192, f = 32, 16M entries per chunk ran 3x
slower."""
GPU_CHUNK_ELEMENTS = 1 << 24
"""The same on a GPU (64 MiB in fp32): there small chunks cost kernel launches, not cache misses
(H100, n = 16384, f = 64: 1M entries per chunk ran 4x slower than 16M)."""


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
    elements = CHUNK_ELEMENTS if x.device.type == "cpu" else GPU_CHUNK_ELEMENTS
    return max(16, elements // (f * f * rows))


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


class _Moments:
    """The running key moments (S0, S1, S2) of the causal path; S2 only for order 2."""

    def __init__(self, y: Tensor, values: Tensor, order: int) -> None:
        self.order = order
        self.s0 = values.sum(-2, keepdim=True)
        self.s1 = y.transpose(-1, -2) @ values
        self.s2 = _outer(y).transpose(-1, -2) @ values * 0.5 if order >= 2 else None

    def add(self, y: Tensor, values: Tensor) -> None:
        self.s0 = self.s0 + values.sum(-2, keepdim=True)
        self.s1 = self.s1 + y.transpose(-1, -2) @ values
        if self.order >= 2:
            self.s2 = self.s2 + _outer(y).transpose(-1, -2) @ values * 0.5

    def apply(self, x: Tensor) -> Tensor:
        """phi(x) S for queries x: (.., C, f) -> (.., C, d+1)."""
        mixed = self.s0 + x @ self.s1
        return mixed + _outer(x) @ self.s2 if self.order >= 2 else mixed


def _polynomial(s: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """T_order(s) and its derivative (order 1 or 2)."""
    if order >= 2:
        return 1 + s + 0.5 * s * s, 1 + s
    return 1 + s, torch.ones_like(s)


def _causal_spans(n: int, offset: int, chunk: int):
    """(query span, key span) per chunk: query i is position offset + i among the keys."""
    return [(slice(a, a + chunk), slice(offset + a, offset + a + chunk))
            for a in range(0, n, chunk)]


class _TaylorCausal(torch.autograd.Function):
    """Causal order <= 2: inside a chunk the masked C x C polynomial kernel T(x_i . y_j) is
    applied directly; across chunks the running moments (S0, S1, S2) of the earlier keys. The
    backward makes two sweeps, forward (rebuilding the moments each chunk's queries saw: their
    gradients) and backward (accumulating what the later queries asked of each chunk's keys),
    so no per-chunk state is stored: memory O(chunk x f^2 + f^2 x d) per (batch, head)."""

    @staticmethod
    def forward(ctx, x, y, v, valid, order: int, chunk: int):
        values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        if valid is not None:
            values = values * valid[:, None, :, None].to(v.dtype)
        n, m = x.shape[-2], y.shape[-2]
        offset = m - n  # keys before the first query: visible to every query (cached decoding)
        moments = _Moments(y[..., :offset, :], values[..., :offset, :], order)
        mixed = torch.empty(*x.shape[:-1], values.shape[-1], dtype=x.dtype, device=x.device)
        for qs, ks in _causal_spans(n, offset, chunk):
            xs, ys, us = x[..., qs, :], y[..., ks, :], values[..., ks, :]
            kernel = torch.tril(_polynomial(xs @ ys.transpose(-1, -2), order)[0])
            mixed[..., qs, :] = kernel @ us + moments.apply(xs)
            moments.add(ys, us)
        normaliser = mixed[..., -1:]
        denominator = normaliser.clamp_min(NORMALISER_EPS)
        out = mixed[..., :-1] / denominator
        denominator = torch.where(normaliser > NORMALISER_EPS, denominator, -denominator)
        ctx.save_for_backward(x, y, values, valid, out, denominator)
        ctx.order, ctx.chunk = order, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, values, valid, out, denominator = ctx.saved_tensors
        order, chunk = ctx.order, ctx.chunk
        kept = denominator > 0
        denominator = denominator.abs()
        grad_mixed = torch.cat(
            [grad / denominator, -(grad * out).sum(-1, keepdim=True) / denominator * kept], dim=-1
        )
        n, m = x.shape[-2], y.shape[-2]
        offset = m - n
        spans = _causal_spans(n, offset, chunk)
        grad_x, grad_y, grad_values = (torch.zeros_like(t) for t in (x, y, values))
        # sweep 1, forward: the queries' side, and the exact in-chunk terms
        moments = _Moments(y[..., :offset, :], values[..., :offset, :], order)
        for qs, ks in spans:
            xs, ys, us, gs = x[..., qs, :], y[..., ks, :], values[..., ks, :], grad_mixed[..., qs, :]
            kernel, slope = _polynomial(xs @ ys.transpose(-1, -2), order)
            kernel, slope = torch.tril(kernel), torch.tril(slope)
            grad_values[..., ks, :] += kernel.transpose(-1, -2) @ gs
            grad_scores = (gs @ us.transpose(-1, -2)) * slope  # d loss / d (x_i . y_j)
            grad_x[..., qs, :] += grad_scores @ ys + gs @ moments.s1.transpose(-1, -2)
            grad_y[..., ks, :] += grad_scores.transpose(-1, -2) @ xs
            if order >= 2:
                grad_x[..., qs, :] += 2 * _symmetric_matvec(gs @ moments.s2.transpose(-1, -2), xs)
            moments.add(ys, us)
        # sweep 2, backward: G = what the queries after a chunk asked of its keys' moments
        g0 = g1 = g2 = None
        for qs, ks in reversed([(slice(0, 0), slice(0, offset)), *spans]):
            ys, us = y[..., ks, :], values[..., ks, :]
            if g0 is not None:
                grad_values[..., ks, :] += g0 + ys @ g1
                grad_y[..., ks, :] += us @ g1.transpose(-1, -2)
                if order >= 2:  # S2 = R / 2: d loss / d R = G2 / 2
                    grad_values[..., ks, :] += _outer(ys) @ g2 * 0.5
                    grad_y[..., ks, :] += _symmetric_matvec(us @ g2.transpose(-1, -2), ys)
            xs, gs = x[..., qs, :], grad_mixed[..., qs, :]
            if qs.stop == 0:
                break
            step = (gs.sum(-2, keepdim=True), xs.transpose(-1, -2) @ gs,
                    _outer(xs).transpose(-1, -2) @ gs if order >= 2 else None)
            if g0 is None:
                g0, g1, g2 = step
            else:
                g0, g1 = g0 + step[0], g1 + step[1]
                g2 = g2 + step[2] if order >= 2 else None
        grad_v = grad_values[..., :-1]
        if valid is not None:
            valid = valid[:, None, :, None].to(grad_v.dtype)
            grad_v, grad_y = grad_v * valid, grad_y * valid
        return grad_x, grad_y, grad_v, None, None, None


def taylor_noncausal(
    x: Tensor, y: Tensor, v: Tensor, *, order: int, key_valid: Tensor | None
) -> Tensor:
    """x (B, H, n, f) and y (B, H, m, f) already scaled by sqrt(tau); v (B, H, m, d); key_valid
    (B, m) bool or None. -> (B, H, n, d)."""
    if order > 2:
        raise ValueError(f"the chunked Taylor path handles order <= 2, got {order}")
    return _TaylorNonCausal.apply(x, y, v, key_valid, order)


def taylor_causal(
    x: Tensor, y: Tensor, v: Tensor, *, order: int, key_valid: Tensor | None, chunk_size: int
) -> Tensor:
    """Causal `taylor_noncausal`: the n queries are the last n of the m >= n keys."""
    if order > 2:
        raise ValueError(f"the chunked Taylor path handles order <= 2, got {order}")
    if y.shape[-2] < x.shape[-2]:
        raise ValueError(f"causal attention needs m >= n keys, got m={y.shape[-2]} < n={x.shape[-2]}")
    return _TaylorCausal.apply(x, y, v, key_valid, order, chunk_size)

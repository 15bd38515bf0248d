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


class _Moments:
    """Moments (S0, S1, S2) of rows y with weights u: S0 = sum_j u_j, S1 = sum_j y_j u_j^T and,
    for order 2, S2 = 1/2 sum_j vec(y_j y_j^T) u_j^T, so that phi(x) . S = `apply(x)`.

    The same form serves both directions: the keys' moments with u = [v, 1], and the queries'
    moments with u = d loss / d mixed, which are the gradient of the loss with respect to the
    keys' moments (with the 1/2 of S2 folded in). Long inputs are taken in chunks of f^2-wide
    outer products that fit the cache (`_chunk`)."""

    def __init__(self, y: Tensor, u: Tensor, order: int) -> None:
        self.order = order
        self.s0 = u.sum(-2, keepdim=True)  # (.., 1, e)
        self.s1 = y.transpose(-1, -2) @ u  # (.., f, e)
        self.s2 = None
        if order >= 2:  # (.., f^2, e)
            self.s2 = y.new_zeros(*y.shape[:-2], y.shape[-1] ** 2, u.shape[-1])
            self._add_s2(y, u)

    def add(self, y: Tensor, u: Tensor) -> None:
        """Add the moments of more rows, in place."""
        self.s0 += u.sum(-2, keepdim=True)
        self.s1 += y.transpose(-1, -2) @ u
        if self.order >= 2:
            self._add_s2(y, u)

    def _add_s2(self, y: Tensor, u: Tensor) -> None:
        half = u * 0.5  # the 1/2 on the (C, e) weights, not on the (f^2, e) product
        for span in _spans(y.shape[-2], _chunk(y)):
            self.s2 += _outer(y[..., span, :]).transpose(-1, -2) @ half[..., span, :]

    def apply(self, x: Tensor) -> Tensor:
        """phi(x) . S for rows x: (.., C, f) -> (.., C, e)."""
        out = self.s0 + x @ self.s1
        if self.order >= 2:
            for span in _spans(x.shape[-2], _chunk(x)):
                out[..., span, :] += _outer(x[..., span, :]) @ self.s2
        return out

    def apply_backward(self, x: Tensor, grad: Tensor) -> Tensor:
        """d/dx of sum(grad * apply(x)): (.., C, f). For S2 (symmetric in its two channel
        indices), d/dx of vec(x x^T) S2 g is 2 M x with M = S2 g as an f x f matrix."""
        out = grad @ self.s1.transpose(-1, -2)
        if self.order >= 2:
            for span in _spans(x.shape[-2], _chunk(x)):
                out[..., span, :] += 2 * _symmetric_matvec(
                    grad[..., span, :] @ self.s2.transpose(-1, -2), x[..., span, :])
        return out


def _weights(v: Tensor, valid: Tensor | None) -> Tensor:
    """u = [v, 1] per key, zeroed for padded keys: they add nothing to numerator or normaliser."""
    values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if valid is not None:
        values = values * valid[:, None, :, None].to(v.dtype)
    return values


def _normalise(mixed: Tensor) -> tuple[Tensor, Tensor]:
    """out = numerator / clamped normaliser, and the clamped normaliser signed negative where the
    clamp acted (there it is a constant: no gradient flows through it)."""
    normaliser = mixed[..., -1:]
    denominator = normaliser.clamp_min(NORMALISER_EPS)
    out = mixed[..., :-1] / denominator
    return out, torch.where(normaliser > NORMALISER_EPS, denominator, -denominator)


def _grad_mixed(grad: Tensor, out: Tensor, signed_denominator: Tensor) -> Tensor:
    """d loss / d mixed from d loss / d out: the numerator's columns, then the normaliser's."""
    kept = signed_denominator > 0
    denominator = signed_denominator.abs()
    return torch.cat(
        [grad / denominator, -(grad * out).sum(-1, keepdim=True) / denominator * kept], dim=-1
    )


def _key_grads(grad_values: Tensor, grad_y: Tensor, valid: Tensor | None):
    """(d/dy, d/dv) with padded keys' gradients zeroed."""
    grad_v = grad_values[..., :-1]
    if valid is not None:
        valid = valid[:, None, :, None].to(grad_v.dtype)
        grad_v, grad_y = grad_v * valid, grad_y * valid
    return grad_y, grad_v


class _TaylorNonCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, v, valid, order: int):
        values = _weights(v, valid)
        keys = _Moments(y, values, order)
        out, denominator = _normalise(keys.apply(x))
        ctx.save_for_backward(x, y, values, valid, out, denominator)
        ctx.order, ctx.keys = order, keys
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, values, valid, out, denominator = ctx.saved_tensors
        grad_mixed = _grad_mixed(grad, out, denominator)
        queries = _Moments(x, grad_mixed, ctx.order)  # d loss / d (the keys' moments)
        grad_x = ctx.keys.apply_backward(x, grad_mixed)
        grad_values = queries.apply(y)
        grad_y = queries.apply_backward(y, values)
        return grad_x, *_key_grads(grad_values, grad_y, valid), None, None


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
        values = _weights(v, valid)
        n, m = x.shape[-2], y.shape[-2]
        offset = m - n  # keys before the first query: visible to every query (cached decoding)
        keys = _Moments(y[..., :offset, :], values[..., :offset, :], order)
        mixed = torch.empty(*x.shape[:-1], values.shape[-1], dtype=x.dtype, device=x.device)
        for qs, ks in _causal_spans(n, offset, chunk):
            xs, ys, us = x[..., qs, :], y[..., ks, :], values[..., ks, :]
            kernel = torch.tril(_polynomial(xs @ ys.transpose(-1, -2), order)[0])
            mixed[..., qs, :] = kernel @ us + keys.apply(xs)
            keys.add(ys, us)
        out, denominator = _normalise(mixed)
        ctx.save_for_backward(x, y, values, valid, out, denominator)
        ctx.order, ctx.chunk = order, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        x, y, values, valid, out, denominator = ctx.saved_tensors
        order, chunk = ctx.order, ctx.chunk
        grad_mixed = _grad_mixed(grad, out, denominator)
        n, m = x.shape[-2], y.shape[-2]
        offset = m - n
        spans = _causal_spans(n, offset, chunk)
        grad_x, grad_y, grad_values = (torch.zeros_like(t) for t in (x, y, values))
        # sweep 1, forward: the queries' side, and the exact in-chunk terms
        keys = _Moments(y[..., :offset, :], values[..., :offset, :], order)
        for qs, ks in spans:
            xs, ys, us, gs = x[..., qs, :], y[..., ks, :], values[..., ks, :], grad_mixed[..., qs, :]
            kernel, slope = _polynomial(xs @ ys.transpose(-1, -2), order)
            kernel, slope = torch.tril(kernel), torch.tril(slope)
            grad_values[..., ks, :] += kernel.transpose(-1, -2) @ gs
            grad_scores = (gs @ us.transpose(-1, -2)) * slope  # d loss / d (x_i . y_j)
            grad_x[..., qs, :] += grad_scores @ ys + keys.apply_backward(xs, gs)
            grad_y[..., ks, :] += grad_scores.transpose(-1, -2) @ xs
            keys.add(ys, us)
        # sweep 2, backward: what the queries after a chunk asked of its keys' moments
        later = _Moments(x[..., :0, :], grad_mixed[..., :0, :], order)  # zeros
        for qs, ks in reversed([(slice(0, 0), slice(0, offset)), *spans]):
            ys, us = y[..., ks, :], values[..., ks, :]
            grad_values[..., ks, :] += later.apply(ys)
            grad_y[..., ks, :] += later.apply_backward(ys, us)
            later.add(x[..., qs, :], grad_mixed[..., qs, :])
        return grad_x, *_key_grads(grad_values, grad_y, valid), None, None, None


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

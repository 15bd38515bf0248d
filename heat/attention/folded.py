"""HEAT in the folded form (DESIGN.md section 8): no (n, d, r) feature tensor is materialised.

With the eigenfunctions fitted as polynomials in t = a / R, phi(a) = V(t) C (C: P x r), the
factorised kernel is kappa(a, b) ~ V(t_a) (C C^T) V(t_b)^T, so per channel c
    numerator_i = V(t_ic) (C C^T) sum_j V(t_jc)^T v_jc,   normaliser_i likewise without v.
Accumulate the P key moments sum_j t_jc^p v_jc (and sum_j t_jc^p), multiply by the P x P matrix
C C^T (rank r, so the rank still bounds the kernel), and evaluate the resulting polynomial at each
query by Horner's rule: O(P) work per element. Causal: prefix sums of the moments inside a chunk
plus a running state across chunks, memory O(chunk * P * d) per head.

Shapes: t_q (B, H, n, d), t_k and v (B, H, m, d); moments (P, B, H, [C,] d).
"""

from __future__ import annotations

import torch
from torch import Tensor


def horner(t: Tensor, coefficients: Tensor) -> Tensor:
    """sum_p coefficients[p] * t^p; coefficients (P, ...) broadcastable against t."""
    result = coefficients[-1].expand_as(t)
    for p in range(coefficients.shape[0] - 2, -1, -1):
        result = result * t + coefficients[p]
    return result


def key_moments(t_k: Tensor, v: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """t^p v and t^p for p < P, stacked on a new leading axis: each (P, *t_k.shape)."""
    power = torch.ones_like(t_k)
    weighted, plain = [], []
    for _ in range(degree):
        weighted.append(power * v)
        plain.append(power)
        power = power * t_k
    return torch.stack(weighted), torch.stack(plain)


def folded_heat(
    t_q: Tensor,
    t_k: Tensor,
    v: Tensor,
    kernel: Tensor,
    *,
    key_valid: Tensor | None,
    causal: bool,
    chunk_size: int,
    floor: Tensor,
) -> Tensor:
    """o_ic = V(t_ic) K M_c / V(t_ic) K Z_c with K = C C^T (P, P); floor (B, 1, n, 1)."""
    if key_valid is not None:  # (B, 1, m, 1): padded keys add nothing to any moment
        t_k, v = t_k * key_valid, v * key_valid
    degree = kernel.shape[0]
    if not causal:
        moments_v, moments_1 = (x.sum(dim=3) for x in key_moments(t_k, v, degree))  # (P,B,H,d)
        if key_valid is not None:  # t^0 = 1 must not count padded keys
            moments_1[0] = key_valid.sum(dim=2).expand_as(moments_1[0])
        numerator = horner(t_q, _mix(kernel, moments_v)[:, :, :, None, :])
        normaliser = horner(t_q, _mix(kernel, moments_1)[:, :, :, None, :])
        return numerator / torch.maximum(normaliser, floor)
    return _causal(t_q, t_k, v, kernel, key_valid, chunk_size, floor)


def _mix(kernel: Tensor, moments: Tensor) -> Tensor:
    """K @ moments along the leading P axis."""
    return torch.tensordot(kernel, moments, dims=([1], [0]))


def _causal(t_q, t_k, v, kernel, key_valid, chunk_size, floor) -> Tensor:
    n, m = t_q.shape[2], t_k.shape[2]
    offset = m - n  # keys before the first query (cached decoding) are visible to all
    degree = kernel.shape[0]
    ones = torch.ones_like(t_k) if key_valid is None else key_valid.expand_as(t_k)
    state_v, state_1 = (x.sum(dim=3) for x in key_moments(
        t_k[:, :, :offset], v[:, :, :offset], degree))  # (P, B, H, d)
    state_1[0] = ones[:, :, :offset].sum(dim=2)
    outputs = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        keys = slice(offset + start, offset + stop)
        chunk_v, chunk_1 = key_moments(t_k[:, :, keys], v[:, :, keys], degree)  # (P,B,H,C,d)
        chunk_1[0] = ones[:, :, keys]
        prefix_v = chunk_v.cumsum(dim=3) + state_v[:, :, :, None]
        prefix_1 = chunk_1.cumsum(dim=3) + state_1[:, :, :, None]
        t_c = t_q[:, :, start:stop]
        numerator = horner(t_c, _mix(kernel, prefix_v))
        normaliser = horner(t_c, _mix(kernel, prefix_1))
        outputs.append(numerator / torch.maximum(normaliser, floor[:, :, start:stop]))
        state_v, state_1 = prefix_v[:, :, :, -1], prefix_1[:, :, :, -1]
    return torch.cat(outputs, dim=2)

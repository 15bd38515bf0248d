"""Linear attention from feature maps, the engine of `heat` and `taylor`.

Given features with phi(q) . phi(k) ~ kernel(q, k) >= 0,
    out_i = sum_j phi(q_i) . phi(k_j) v_j / sum_j phi(q_i) . phi(k_j)
          = phi(q_i) S / phi(q_i) z,    S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j).
Non-causal: one pass, O(n F E). Causal: chunked prefix sums; inside a chunk the masked quadratic
form, across chunks a running (S, z), so memory is O(F E + C^2) per batch element instead of the
O(n F E) of a materialised cumsum (Katharopoulos et al., 2020, chunked as in later linear-attention
kernels).

Shapes: phi_q (..., n, F), phi_k (..., m, F), v (..., m, E) -> (..., n, E). Padded keys must have
phi_k = 0 (the caller zeroes them). Causal alignment as in `base.keep_mask`: the n queries are the
last n of the m positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALISER_EPS = 1e-6
"""Normalisers are clamped to at least this: a key-less query (all keys padded) outputs 0, and a
non-positive normaliser (odd Taylor orders, very low svd ranks) cannot flip or blow up a sign."""


def linear_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    chunk_size: int,
    normaliser_floor: Tensor | None = None,
) -> Tensor:
    """`normaliser_floor` (..., n, 1), if given, replaces NORMALISER_EPS as each query's lower
    bound on its normaliser (a kernel known to be >= c > 0 has normaliser >= c * visible keys)."""
    n = phi_q.shape[-2]
    if normaliser_floor is None:
        normaliser_floor = phi_q.new_full((n, 1), NORMALISER_EPS)
    floor = torch.broadcast_to(normaliser_floor, (*normaliser_floor.shape[:-2], n, 1))
    if not causal:
        state = phi_k.transpose(-1, -2) @ v  # (..., F, E)
        z = phi_k.sum(dim=-2)  # (..., F)
        numerator = phi_q @ state  # (..., n, E)
        normaliser = phi_q @ z[..., None]  # (..., n, 1)
        return numerator / torch.maximum(normaliser, floor)
    return _causal_linear_attention(phi_q, phi_k, v, chunk_size, floor)


def _causal_linear_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk_size: int, floor: Tensor
) -> Tensor:
    n, m = phi_q.shape[-2], phi_k.shape[-2]
    offset = m - n  # keys before the first query: visible to every query (cached decoding)
    state = phi_k[..., :offset, :].transpose(-1, -2) @ v[..., :offset, :]  # (..., F, E)
    z = phi_k[..., :offset, :].sum(dim=-2)  # (..., F)
    outputs = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        q_c = phi_q[..., start:stop, :]  # (..., C, F)
        k_c = phi_k[..., offset + start:offset + stop, :]  # (..., C, F)
        v_c = v[..., offset + start:offset + stop, :]  # (..., C, E)
        scores = torch.tril(q_c @ k_c.transpose(-1, -2))  # (..., C, C), query i sees keys <= i
        numerator = scores @ v_c + q_c @ state
        normaliser = scores.sum(dim=-1, keepdim=True) + q_c @ z[..., None]
        outputs.append(numerator / torch.maximum(normaliser, floor[..., start:stop, :]))
        state = state + k_c.transpose(-1, -2) @ v_c
        z = z + k_c.sum(dim=-2)
    return torch.cat(outputs, dim=-2)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in fp32 for fp32/bf16/fp16 inputs, keep fp64 when asked for (tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32

"""HEAT: Hadamard Estimated Attention (Catapang, 2022), made precise in DESIGN.md section 3.

`hadamard` attention with its per-channel kernel exp(a b) on [-R, R]^2 replaced by a rank-r
factorisation exp(a b) ~ sum_s phi_s(a) phi_s(b) (see `exp_basis`). Per channel c this is linear
attention with r features:
    o_ic = sum_s phi_s(a_ic) S_sc / sum_s phi_s(a_ic) z_sc,
    S_sc = sum_j phi_s(b_jc) v_jc,   z_sc = sum_j phi_s(b_jc).
Cost O(n r d); causal by chunked prefix sums. This is the reference form: it materialises the
(n, d, r) features. Accumulation in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.exp_basis import svd_basis, svd_features, taylor_features
from heat.attention.hadamard import bounded
from heat.attention.linear import NORMALISER_EPS, accumulation_dtype, linear_attention
from heat.attention.registry import register
from heat.attention.specs import HeatSpec


@register(HeatSpec)
class HeatAttention(AttentionKernel):
    capabilities = Capabilities(causal=True, cross=True, fixed_max_length=False)

    def __init__(
        self, spec: HeatSpec, *, head_dim: int, num_heads: int, shared: dict[str, Any] | None = None
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec
        # Computed once per (R, sigma, r, G) and cached process-wide; a plain attribute, not a
        # buffer, so that model.to(bfloat16) cannot round the basis and it never gets a gradient.
        self.basis = (
            svd_basis(spec.bound, spec.sigma, spec.rank, spec.quadrature_nodes)
            if spec.basis == "svd" else None
        )

    def features(self, x: Tensor) -> Tensor:
        """phi_s(x) per element: (...,) -> (..., r)."""
        if self.basis is not None:
            return svd_features(x, self.basis)
        return taylor_features(x, self.spec.rank)

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        dtype = accumulation_dtype(q.dtype)
        phi_a = self.features(bounded(q.to(dtype), self.spec.bound))  # (B, H, n, d, r)
        phi_b = self.features(bounded(k.to(dtype), self.spec.bound))  # (B, H, m, d, r)
        if key_padding_mask is not None:
            phi_b = phi_b.masked_fill(key_padding_mask[:, None, :, None, None], 0.0)
        # each channel is its own linear attention: move channels into the batch dimensions
        out = linear_attention(
            phi_a.transpose(2, 3),  # (B, H, d, n, r)
            phi_b.transpose(2, 3),  # (B, H, d, m, r)
            v.to(dtype).transpose(2, 3)[..., None],  # (B, H, d, m, 1)
            causal=causal,
            chunk_size=self.spec.chunk_size,
            normaliser_floor=self._normaliser_floor(key_padding_mask, q, k, causal),
        )  # (B, H, d, n, 1)
        return out[..., 0].transpose(2, 3).to(q.dtype)  # (B, H, n, d)

    def _normaliser_floor(self, key_padding_mask, q: Tensor, k: Tensor, causal: bool) -> Tensor:
        """exp(ab) >= exp(-R^2) on [-R, R]^2, so the exact normaliser of a query is at least
        exp(-R^2) times its number of visible keys. A low-rank kernel can dip below that, even
        below zero, where few keys are visible (early causal positions); clamping to the exact
        bound keeps those rows finite instead of dividing by ~0. Shape (B, 1, 1, n, 1)."""
        batch, n, m = q.shape[0], q.shape[2], k.shape[2]
        valid = (
            torch.ones(batch, m, device=q.device) if key_padding_mask is None
            else (~key_padding_mask).to(torch.float32)
        )  # (B, m)
        if causal:
            visible = valid.cumsum(dim=-1)[:, m - n:]  # (B, n): keys <= i + (m - n)
        else:
            visible = valid.sum(dim=-1, keepdim=True).expand(batch, n)  # (B, n)
        floor = (visible * math.exp(-self.spec.bound**2)).clamp_min(NORMALISER_EPS)
        return floor.to(accumulation_dtype(q.dtype))[:, None, None, :, None]

    def extra_repr(self) -> str:
        return f"rank={self.spec.rank}, basis={self.spec.basis}, bound={self.spec.bound}"

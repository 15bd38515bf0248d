"""Taylor-softmax attention: exp(tau q.k) replaced by its order-p Taylor polynomial.

The second source document, made precise in DESIGN.md section 3. With x = sqrt(tau) q and
y = sqrt(tau) k (tau = 1/sqrt(f), f the feature dimension),
    T_p(x.y) = sum_{i<=p} (x.y)^i / i! = phi(x) . phi(y),
where phi stacks, for each degree i, one feature per multiset alpha of i channels (symmetric terms
only): x^alpha / sqrt(prod_c alpha_c!). There are D_p = sum_{i<=p} C(f+i-1, i) features, so q and k
can be projected to a small f first (`feature_dim`). Linear attention on phi: O(n D_p d), causal by
chunked prefix sums. Even p: T_p(s) > 0 for all real s, so every normaliser is positive; odd p can
make one zero or negative (clamped, and warned about at construction).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn

from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.linear import accumulation_dtype, linear_attention
from heat.attention.registry import register
from heat.attention.specs import TaylorSpec
from heat.attention.taylor_fast import taylor_causal, taylor_noncausal


def monomial_terms(dim: int, degree: int) -> tuple[Tensor, Tensor]:
    """Multisets of `degree` channels out of `dim`: indices (D, degree) and 1/sqrt(prod alpha!)."""
    combos = list(itertools.combinations_with_replacement(range(dim), degree))
    scales = [
        1.0 / math.sqrt(math.prod(math.factorial(c) for c in Counter(combo).values()))
        for combo in combos
    ]
    return torch.tensor(combos, dtype=torch.long), torch.tensor(scales, dtype=torch.float64)


def feature_count(dim: int, order: int) -> int:
    """D_p, the number of Taylor features of order p over `dim` channels."""
    return sum(math.comb(dim + i - 1, i) for i in range(order + 1))


@register(TaylorSpec)
class TaylorAttention(AttentionKernel):
    capabilities = Capabilities(causal=True, cross=True, fixed_max_length=False)

    def __init__(
        self, spec: TaylorSpec, *, head_dim: int, num_heads: int, shared: dict[str, Any] | None = None
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec
        if spec.order % 2 == 1:
            warnings.warn(
                f"taylor.order={spec.order} is odd: normalisers can be zero or negative and are "
                f"clamped to a small positive value; prefer an even order",
                stacklevel=2,
            )
        self.feature_dim = spec.feature_dim or head_dim
        # shared by all heads, like the head-shared projections of Linformer
        self.projection = (
            nn.Linear(head_dim, spec.feature_dim, bias=False) if spec.feature_dim else None
        )
        terms = [monomial_terms(self.feature_dim, i) for i in range(2, spec.order + 1)]
        self._indices = [indices for indices, _ in terms]
        self._scales = [scales for _, scales in terms]

    def features(self, x: Tensor) -> Tensor:
        """phi(x): (..., f) -> (..., D_p); x is already scaled by sqrt(tau)."""
        parts = [torch.ones_like(x[..., :1]), x]
        for indices, scales in zip(self._indices, self._scales):
            gathered = x[..., indices.to(x.device)]  # (..., D_i, i)
            parts.append(gathered.prod(dim=-1) * scales.to(device=x.device, dtype=x.dtype))
        return torch.cat(parts, dim=-1)

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        if self.projection is not None:
            q, k = self.projection(q), self.projection(k)  # (B, H, n|m, f)
        dtype = accumulation_dtype(q.dtype)
        scale = self.feature_dim ** -0.25  # sqrt(tau), tau = 1/sqrt(f)
        if self.spec.implementation == "auto" and self.spec.order <= 2:
            valid = None if key_padding_mask is None else ~key_padding_mask
            x, y = q.to(dtype) * scale, k.to(dtype) * scale
            if causal:
                out = taylor_causal(x, y, v.to(dtype), order=self.spec.order, key_valid=valid,
                                    chunk_size=self.spec.chunk_size)
            else:
                out = taylor_noncausal(x, y, v.to(dtype), order=self.spec.order, key_valid=valid)
            return out.to(v.dtype)
        phi_q = self.features(q.to(dtype) * scale)  # (B, H, n, D)
        phi_k = self.features(k.to(dtype) * scale)  # (B, H, m, D)
        if key_padding_mask is not None:
            phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        out = linear_attention(
            phi_q, phi_k, v.to(dtype), causal=causal, chunk_size=self.spec.chunk_size
        )
        return out.to(v.dtype)

    def extra_repr(self) -> str:
        return f"order={self.spec.order}, feature_dim={self.feature_dim}"

"""Exact softmax attention (Vaswani et al., 2017): softmax(tau Q K^T + mask) V, tau = 1/sqrt(d).

Computed by `torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel (flash /
memory-efficient on GPU). Cost O(n m d) time; O(n) extra memory with the fused kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from heat.attention.base import AttentionKernel, Capabilities, keep_mask
from heat.attention.registry import register
from heat.attention.specs import AttentionSpec


@dataclass(frozen=True, kw_only=True)
class SoftmaxSpec(AttentionSpec):
    """Exact softmax attention through `scaled_dot_product_attention`."""

    name: ClassVar[str] = "softmax"
    listing_order: ClassVar[int] = 10

    def label(self) -> str:
        return "softmax (SDPA)"


@register(SoftmaxSpec)
class SoftmaxAttention(AttentionKernel):
    capabilities = Capabilities(causal=True, cross=True, fixed_max_length=False)
    time_exponent = 2

    def __init__(
        self, spec: SoftmaxSpec, *, head_dim: int, num_heads: int, shared: dict[str, Any] | None = None
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        return softmax_attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal)


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, *, key_padding_mask: Tensor | None, causal: bool
) -> Tensor:
    """Exact attention through SDPA; also the exact path of approximations (Nystrom, m <= l)."""
    n, m = q.shape[2], k.shape[2]
    if key_padding_mask is None and (not causal or n == m):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    keep = keep_mask(key_padding_mask, n, m, causal, q.device)  # (B|1, 1, n, m)
    # A query that may see no key at all (an empty source) would give NaN; let it see every
    # key and zero its output instead.
    empty = ~keep.any(dim=-1, keepdim=True)  # (B|1, 1, n, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep | empty)
    return out.masked_fill(empty, 0.0)

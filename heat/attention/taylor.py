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
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.linear import accumulation_dtype, linear_attention
from heat.attention.registry import register
from heat.attention.softmax import SoftmaxSpec
from heat.attention.specs import AttentionSpec, Sweep
from heat.attention.taylor_fast import taylor_causal, taylor_noncausal


@dataclass(frozen=True, kw_only=True)
class TaylorSpec(AttentionSpec):
    """exp(tau q.k) replaced by its order-`order` Taylor polynomial, as feature maps."""

    name: ClassVar[str] = "taylor"
    listing_order: ClassVar[int] = 60
    demo_order: ClassVar[int] = 20
    sweeps: ClassVar[tuple[Sweep, ...]] = (
        Sweep("order", "orders", (2,)),
        Sweep("feature_dim", "feature-dims", (0,), low=0, help="0 = the head dimension"),
    )
    MAX_ORDER: ClassVar[int] = 4

    order: int = 2
    """p, the degree of the Taylor polynomial. Even orders keep every normaliser positive."""
    feature_dim: int = 0
    """If > 0, q and k are first projected (learned, per head shared) to this many features."""
    allow_odd: bool = False
    """Odd orders can make a normaliser zero or negative; they need this opt-in."""
    chunk_size: int = 128
    """Positions per chunk of the causal prefix sums."""
    implementation: str = "auto"
    """'auto': order <= 2 (causal or not) runs on the key moments, chunked, with a hand-written
    backward and no (n, features) tensor (`taylor_fast`); higher orders as 'features': the
    symmetric feature map materialised, plain linear attention (the reference)."""

    def __post_init__(self) -> None:
        self.check_choice("implementation", ("auto", "features"))
        self.check_bool("allow_odd")
        self.check_int("order", 1, self.MAX_ORDER)
        self.check_int("feature_dim", 0, 1024)
        self.check_int("chunk_size", 1, 1 << 16)
        if self.order % 2 == 1 and not self.allow_odd:
            raise self.error(
                "order",
                f"odd order {self.order} can make attention normalisers zero or negative; use an "
                f"even order (2 or 4) or set allow_odd: true",
            )

    def exact_counterpart(self) -> SoftmaxSpec:
        return SoftmaxSpec()

    @classmethod
    def contract_examples(cls) -> dict[str, TaylorSpec]:
        return {"taylor": cls(order=2, chunk_size=7),
                "taylor-projected": cls(order=4, feature_dim=4, chunk_size=7)}

    @classmethod
    def demo_examples(cls, length: int) -> dict[str, TaylorSpec]:
        return {f"order={order}": cls(order=order) for order in (2, 4)}

    def label(self) -> str:
        return f"taylor p{self.order}" + (f" f{self.feature_dim}" if self.feature_dim else "")


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

    def estimated_bytes(self, *, batch: int, n: int, itemsize: int) -> float:
        """The (n, features) feature maps and their gradients."""
        features = feature_count(self.feature_dim, self.spec.order)
        return 4.0 * batch * self.num_heads * n * features * itemsize

    def extra_repr(self) -> str:
        return f"order={self.spec.order}, feature_dim={self.feature_dim}"

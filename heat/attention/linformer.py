"""Linformer attention (Wang et al., 2020, "Linformer: Self-Attention with Linear Complexity").

softmax(tau Q (E K)^T) (F V), tau = 1/sqrt(d): the m keys and values are projected along the
sequence axis to k = `rank` rows by learned k x L matrices E and F (L = `max_length`), so the
attention matrix is n x k instead of n x m. Cost O(n k d) time and memory.

Keys shorter than L are zero-padded to L, and key rows at padding are zeroed before projecting,
so appending padded keys changes nothing. E and F are shared across heads (the paper's headwise
sharing); `sharing` says whether E = F and whether one projection serves every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.registry import register
from heat.attention.softmax import SoftmaxSpec
from heat.attention.specs import AttentionSpec, Sweep


@dataclass(frozen=True, kw_only=True)
class LinformerSpec(AttentionSpec):
    """Linformer: keys and values projected along the sequence axis to `rank` rows."""

    name: ClassVar[str] = "linformer"
    listing_order: ClassVar[int] = 20
    demo_order: ClassVar[int] = 40
    sweeps: ClassVar[tuple[Sweep, ...]] = (Sweep("rank", "ranks", (256,)),)
    MAX_RANK: ClassVar[int] = 4096

    rank: int = 64
    """k, the number of projected key/value rows."""
    max_length: int = 512
    """L, the longest key sequence the projections accept (shorter ones are zero-padded)."""
    sharing: str = "kv"
    """'none': separate E and F; 'kv': E = F; 'layer': one E = F shared by every layer's site."""

    def __post_init__(self) -> None:
        self.check_int("max_length", 1, 1 << 20)
        self.check_int("rank", 1, min(self.MAX_RANK, self.max_length))
        self.check_choice("sharing", ("none", "kv", "layer"))

    def exact_counterpart(self) -> SoftmaxSpec:
        return SoftmaxSpec()

    @classmethod
    def for_length(cls, max_length: int, **params: Any) -> Self:
        """Projections of `max_length` columns; a rank above it is lowered to it."""
        rank = min(params.pop("rank", cls.rank), max_length)
        return cls(**params, rank=rank, max_length=max_length)

    @classmethod
    def contract_examples(cls) -> dict[str, LinformerSpec]:
        return {"linformer": cls(rank=8, max_length=64),
                "linformer-none": cls(rank=8, max_length=64, sharing="none")}

    @classmethod
    def demo_examples(cls, length: int) -> dict[str, LinformerSpec]:
        return {f"rank={rank}": cls(rank=rank, max_length=length)
                for rank in (32, 128) if rank <= length}

    def label(self) -> str:
        return f"linformer k{self.rank}"

SHARED_KEY = "linformer_projection"
"""Key of the layer-shared projection in the model's `shared` dict."""


def _new_projection(rank: int, max_length: int) -> nn.Parameter:
    # The authors' fairseq code initialises the compression with xavier_uniform, gain 1/sqrt(2):
    # the variance 1/(k + L) keeps E K at the scale of K for any key length m <= L.
    weight = torch.empty(rank, max_length)
    nn.init.xavier_uniform_(weight, gain=1.0 / math.sqrt(2.0))
    return nn.Parameter(weight)


def _layer_projection(shared: dict[str, Any], rank: int, max_length: int) -> nn.Parameter:
    """The one projection every kernel built with this `shared` dict uses."""
    weight = shared.get(SHARED_KEY)
    if weight is None:
        weight = shared[SHARED_KEY] = _new_projection(rank, max_length)
    elif tuple(weight.shape) != (rank, max_length):
        raise ValueError(
            f"linformer.sharing='layer': the shared projection has shape {tuple(weight.shape)} "
            f"but this site needs (rank, max_length) = ({rank}, {max_length}); sites sharing "
            f"one dict must use the same linformer.rank and linformer.max_length"
        )
    return weight


@register(LinformerSpec)
class LinformerAttention(AttentionKernel):
    capabilities = Capabilities(causal=False, cross=True, fixed_max_length=True)

    def __init__(
        self,
        spec: LinformerSpec,
        *,
        head_dim: int,
        num_heads: int,
        shared: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec
        if spec.sharing == "layer" and shared is not None:
            self.key_projection = _layer_projection(shared, spec.rank, spec.max_length)
        else:
            # A standalone kernel (no model-owned dict) has no other layer to share with, so
            # sharing='layer' degrades to 'kv'.
            self.key_projection = _new_projection(spec.rank, spec.max_length)
        self.value_projection = (
            _new_projection(spec.rank, spec.max_length) if spec.sharing == "none" else None
        )

    def projections(self) -> tuple[Tensor, Tensor]:
        """(E, F), each (rank, max_length); the same tensor unless sharing='none'."""
        value = self.key_projection if self.value_projection is None else self.value_projection
        return self.key_projection, value

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        m = k.shape[2]
        if m > self.spec.max_length:
            raise ValueError(
                f"linformer.max_length={self.spec.max_length} is shorter than the key length "
                f"m={m}; raise linformer.max_length or truncate the input"
            )
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, :, None]  # (B, 1, m, 1)
            k = k.masked_fill(pad, 0.0)
            v = v.masked_fill(pad, 0.0)
        e, f = self.projections()
        # Zero-padding K to L rows and multiplying by E (k x L) equals multiplying the m real rows
        # by E's first m columns; slicing avoids materialising the padding.
        k_proj = torch.matmul(e[:, :m].to(k.dtype), k)  # (k, m) @ (B, H, m, d) -> (B, H, k, d)
        v_proj = torch.matmul(f[:, :m].to(v.dtype), v)  # (B, H, k, d)
        # Every query sees all k projected rows: there is nothing left to mask.
        return F.scaled_dot_product_attention(q, k_proj, v_proj)  # (B, H, n, d)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{super().extra_repr()}, rank={s.rank}, max_length={s.max_length}, "
            f"sharing={s.sharing}"
        )

"""The attention-kernel interface every variant implements.

A *kernel* is the part of attention after the Q/K/V projections and the head split: it maps
per-head queries, keys and values to per-head outputs. Projections, heads and caches live in
`heat.layers.MultiHeadAttention`; a kernel only computes. (The split follows x-transformers'
`Attend` and torchtitan's inner attention.)

Shape convention in every kernel file: B batch, H heads, n queries, m keys, d head dimension.
    q: (B, H, n, d)    k, v: (B, H, m, d)    output: (B, H, n, d)
    key_padding_mask:   (B, m) bool, True where the key is padding (PyTorch's convention).
    query_padding_mask: (B, n) bool, True where the query is padding. Only kernels that pool over
                        queries (Nystrom's query landmarks) read it; outputs at padded queries are
                        unspecified and must be ignored by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from heat.attention.registry import causal_variant_names


@dataclass(frozen=True)
class Capabilities:
    """What a variant can do; the model builder and config validation read this."""

    causal: bool
    """Supports causal (decoder self-) attention."""
    cross: bool
    """Supports cross-attention, where the keys come from another sequence (n != m)."""
    fixed_max_length: bool
    """Needs a fixed maximum key length chosen at construction (Linformer's projections)."""
    query_independent: bool = True
    """Each query's output depends only on that query and the keys. False for Nystrom, whose
    query landmarks pool over all queries: in a decoder's cross-attention that lets position t
    see later target tokens, so a decoder needs this for both of its sites."""


class AttentionKernel(nn.Module):
    """Base class of all variants: validates a call, then hands it to `_attend`.

    Subclasses set `capabilities`, take `(spec, *, head_dim, num_heads, shared)` in their
    constructor and implement `_attend` with the same keyword arguments as `forward`;
    `@registry.register(SpecClass)` sets `name`. The rest describes the kernel's cost to
    `heat-pipeline bench attention` (which skips sizes it predicts to be hopeless) and has
    defaults that fit a linear-time kernel.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    time_exponent: ClassVar[int] = 1
    """A call's time grows as n ** time_exponent at large n (2 for the quadratic kernels)."""
    bandwidth_bound: ClassVar[bool] = False
    """Its fast path reads q, k, v about once per pass, so the benchmark reports its achieved
    memory bandwidth against the device's peak (on CUDA)."""

    def __init__(self, *, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        query_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        self._check_call(q, k, v, key_padding_mask, query_padding_mask, causal)
        return self._attend(
            q, k, v, key_padding_mask=key_padding_mask,
            query_padding_mask=query_padding_mask, causal=causal,
        )

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        key_padding_mask: Tensor | None,
        query_padding_mask: Tensor | None,
        causal: bool,
    ) -> Tensor:
        raise NotImplementedError

    def _check_call(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        query_padding_mask: Tensor | None,
        causal: bool,
    ) -> None:
        if causal and not self.capabilities.causal:
            raise ValueError(
                f"attention variant '{self.name}' does not support causal=True; causal-capable "
                f"variants: {', '.join(causal_variant_names())}"
            )
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise ValueError(
                f"{self.name}: q, k, v must be (batch, heads, length, head_dim); got shapes "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
            raise ValueError(
                f"{self.name}: inconsistent shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
                f"v {tuple(v.shape)}"
            )
        if causal and q.shape[2] > k.shape[2]:
            raise ValueError(
                f"{self.name}: causal attention needs at least as many keys as queries "
                f"(queries are the last n positions), got n={q.shape[2]} > m={k.shape[2]}"
            )
        _check_mask("key_padding_mask", key_padding_mask, k.shape[0], k.shape[2])
        _check_mask("query_padding_mask", query_padding_mask, q.shape[0], q.shape[2])

    def estimated_bytes(self, *, batch: int, n: int, itemsize: int) -> float:
        """A coarse upper estimate of what one forward+backward at n = m holds."""
        return 16.0 * batch * self.num_heads * n * self.head_dim * itemsize * 8

    def describe_run(self, device: torch.device, *, causal: bool) -> dict[str, Any]:
        """Facts about how this kernel runs on `device` (e.g. which implementation it picks),
        recorded with each benchmark result."""
        return {}

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_heads={self.num_heads}"


def _check_mask(field: str, mask: Tensor | None, batch: int, length: int) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"{field} must be a bool tensor of shape ({batch}, {length}) with True at padding; "
            f"got dtype {mask.dtype}, shape {tuple(mask.shape)}"
        )


def keep_mask(
    key_padding_mask: Tensor | None, n: int, m: int, causal: bool, device: torch.device
) -> Tensor | None:
    """Boolean (B or 1, 1, n, m) mask, True where query i may attend key j, or None for all.

    Causal alignment: the n queries are the LAST n of the m key positions, so that a decoder
    step with a cache (n=1, m=t) and a full pass (n=m) share one rule: key j is visible to
    query i iff j <= i + (m - n).
    """
    keep = None
    if causal:
        i = torch.arange(n, device=device)[:, None]
        j = torch.arange(m, device=device)[None, :]
        keep = (j <= i + (m - n))[None, None]  # (1, 1, n, m)
    if key_padding_mask is not None:
        valid = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, m)
        keep = valid if keep is None else keep & valid
    return keep

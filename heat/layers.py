"""Transformer layers around an attention kernel: multi-head attention, feed-forward, encoder and
decoder layers and stacks, sinusoidal positions, and the incremental decoder cache.

The kernel (`heat.attention`) only computes attention per head; everything here owns parameters,
heads, residuals and caches, so every attention variant plugs into the same layers.

Shape convention in this file: B batch, n query (target) length, m key (source or cached) length,
D d_model, H heads, d = D / H head dimension, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from heat.attention.base import AttentionKernel


# ---------------------------------------------------------------------------------------------
# Incremental decoding cache


@dataclass
class KVCache:
    """Projected keys and values of one attention site of one layer, each (B, H, t, d).

    Decoder self-attention appends one step at a time; cross-attention fills it once from the
    encoder memory and reads it on every later step.
    """

    k: Tensor | None = None
    v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new positions along the time axis; returns all keys and values so far."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (B, H, t + n, d)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)  # (B, H, t + n, d)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


@dataclass
class DecoderLayerCache:
    self_attention: KVCache = field(default_factory=KVCache)
    cross_attention: KVCache = field(default_factory=KVCache)


@dataclass
class DecoderCache:
    """Everything an incremental decoder keeps between steps.

    `position` counts the target positions already consumed: it is the positional-encoding
    offset of the next step.
    """

    layers: list[DecoderLayerCache]
    position: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> DecoderCache:
        return cls(layers=[DecoderLayerCache() for _ in range(num_layers)])

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search: row i continues hypothesis index[i])."""
        for layer in self.layers:
            layer.self_attention.reorder(index)
            layer.cross_attention.reorder(index)


# ---------------------------------------------------------------------------------------------
# Building blocks


class SinusoidalPositionalEncoding(nn.Module):
    """The fixed sin/cos table of Vaswani et al. (2017), rows 0 .. max_length - 1."""

    def __init__(self, d_model: int, max_length: int) -> None:
        super().__init__()
        self.max_length = max_length
        position = torch.arange(max_length, dtype=torch.float64)[:, None]  # (L, 1)
        inv_freq = torch.exp(
            torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model)
        )  # (ceil(D / 2),)
        table = torch.zeros(max_length, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
        # Not persistent: it is a function of the config, so checkpoints need not carry it.
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, length: int, offset: int = 0, dtype: torch.dtype | None = None) -> Tensor:
        """Encodings of positions offset .. offset + length - 1, shape (length, D), in `dtype`
        (the embeddings' dtype: an fp32 table would promote bf16 activations under DeepSpeed,
        which casts parameters but not buffers)."""
        if offset + length > self.max_length:
            raise ValueError(
                f"sequence positions up to {offset + length} exceed max_length={self.max_length}"
            )
        rows = self.table[offset : offset + length]
        return rows if dtype is None else rows.to(dtype)


class MultiHeadAttention(nn.Module):
    """Q/K/V/O projections and the head split around an attention kernel.

    Self-attention when `memory` is None, cross-attention otherwise. With a `cache`,
    self-attention appends the new keys/values and attends from the new queries to every cached
    position (causal alignment puts the queries last); cross-attention projects the memory once.
    """

    def __init__(self, d_model: int, num_heads: int, kernel: AttentionKernel, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)
        self.kernel = kernel
        # Kernels never expose attention weights (most never form them), so the dropout that
        # would act on them acts on the per-head outputs instead.
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        query_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x: (B, n, D); memory: (B, m, D) or None; masks True at padding. Returns (B, n, D)."""
        q = self._split_heads(self.q_proj(x))  # (B, H, n, d)
        k, v = self._keys_values(x if memory is None else memory, memory is not None, cache)
        out = self.kernel(
            q, k, v, key_padding_mask=key_padding_mask,
            query_padding_mask=query_padding_mask, causal=causal,
        )  # (B, H, n, d)
        return self.out_proj(self.dropout(self._merge_heads(out)))

    def _keys_values(
        self, source: Tensor, is_cross: bool, cache: KVCache | None
    ) -> tuple[Tensor, Tensor]:
        if is_cross and cache is not None and cache.k is not None:
            return cache.k, cache.v  # the memory does not change between decoding steps
        k = self._split_heads(self.k_proj(source))  # (B, H, m, d)
        v = self._split_heads(self.v_proj(source))  # (B, H, m, d)
        if cache is None:
            return k, v
        if is_cross:
            cache.k, cache.v = k, v
            return k, v
        return cache.append(k, v)  # (B, H, t + n, d) each

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        x = x.view(batch, length, self.num_heads, self.head_dim)  # (B, L, H, d)
        return x.transpose(1, 2)  # (B, H, L, d)

    def _merge_heads(self, x: Tensor) -> Tensor:
        batch, _, length, _ = x.shape
        x = x.transpose(1, 2).contiguous()  # (B, L, H, d)
        return x.view(batch, length, self.num_heads * self.head_dim)  # (B, L, D)


class FeedForward(nn.Module):
    """Position-wise Linear -> ReLU -> Dropout -> Linear."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, ffn_dim)
        self.down = nn.Linear(ffn_dim, d_model)
        nn.init.xavier_uniform_(self.up.weight)
        nn.init.xavier_uniform_(self.down.weight)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(torch.relu(self.up(x))))


class Residual(nn.Module):
    """A sublayer wrapped in dropout, a residual connection and layer norm.

    Pre-norm (`norm_first`) normalises the sublayer's input and leaves the residual stream
    untouched, which trains deep stacks without warmup tricks but needs a final norm after the
    stack; post-norm (the original Transformer) normalises after the addition.
    """

    def __init__(self, d_model: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


# ---------------------------------------------------------------------------------------------
# Layers and stacks


class EncoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        norm_first: bool,
        self_attention_kernel: AttentionKernel,
    ) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(d_model, num_heads, self_attention_kernel, dropout)
        self.feed_forward = FeedForward(d_model, ffn_dim, dropout)
        self.attention_block = Residual(d_model, dropout, norm_first)
        self.feed_forward_block = Residual(d_model, dropout, norm_first)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """x: (B, m, D); padding_mask: (B, m) True at padding."""
        x = self.attention_block(
            x,
            lambda h: self.self_attention(
                h, key_padding_mask=padding_mask, query_padding_mask=padding_mask
            ),
        )
        return self.feed_forward_block(x, self.feed_forward)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        norm_first: bool,
        self_attention_kernel: AttentionKernel,
        cross_attention_kernel: AttentionKernel,
    ) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(d_model, num_heads, self_attention_kernel, dropout)
        self.cross_attention = MultiHeadAttention(
            d_model, num_heads, cross_attention_kernel, dropout
        )
        self.feed_forward = FeedForward(d_model, ffn_dim, dropout)
        self.self_attention_block = Residual(d_model, dropout, norm_first)
        self.cross_attention_block = Residual(d_model, dropout, norm_first)
        self.feed_forward_block = Residual(d_model, dropout, norm_first)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None,
        padding_mask: Tensor | None = None,
        cache: DecoderLayerCache | None = None,
    ) -> Tensor:
        """x: (B, n, D) target; memory: (B, m, D); masks True at padding.

        With a cache, x holds only the new positions and `padding_mask` must be None.
        """
        self_cache = cache.self_attention if cache is not None else None
        cross_cache = cache.cross_attention if cache is not None else None
        x = self.self_attention_block(
            x,
            lambda h: self.self_attention(
                h, key_padding_mask=padding_mask, query_padding_mask=padding_mask,
                causal=True, cache=self_cache,
            ),
        )
        x = self.cross_attention_block(
            x,
            lambda h: self.cross_attention(
                h, memory, key_padding_mask=memory_padding_mask,
                query_padding_mask=padding_mask, cache=cross_cache,
            ),
        )
        return self.feed_forward_block(x, self.feed_forward)


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, plus the final norm that pre-norm stacks need."""

    def __init__(self, layers: list[EncoderLayer], d_model: int, norm_first: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """x: (B, m, D) embedded source; returns the memory (B, m, D)."""
        for layer in self.layers:
            x = layer(x, padding_mask)
        return self.final_norm(x)


class TransformerDecoder(nn.Module):
    """A stack of decoder layers, plus the final norm that pre-norm stacks need."""

    def __init__(self, layers: list[DecoderLayer], d_model: int, norm_first: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None,
        padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """x: (B, n, D) embedded target (only the new positions with a cache); returns (B, n, D).

        The caller embeds x at positions starting from `cache.position` and advances it.
        """
        if cache is not None and len(cache.layers) != len(self.layers):
            raise ValueError(
                f"cache has {len(cache.layers)} layers, the decoder {len(self.layers)}"
            )
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = layer(x, memory, memory_padding_mask, padding_mask, layer_cache)
        return self.final_norm(x)

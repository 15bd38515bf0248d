"""The reference translation model: `torch.nn.Transformer` of the project's sizes.

It shares everything outside the transformer body with `heat.models.Seq2SeqTransformer` (one
embedding matrix for source, target and the tied output projection, initialised N(0, 1/d) and
scaled by sqrt(d); the sinusoidal position table; embedding dropout), so a difference between
the two models in `heat-pipeline bench train` is a difference of the layers themselves:
attention, feed-forward, norms, their initialisation (PyTorch's own: Xavier-uniform for every
matrix of `nn.Transformer`) and masking. It has the `config` and `(src, tgt_in) -> logits`
interface `pipeline.training.objectives.TranslationObjective` wraps, and the
`encode` / `decode` that `heat.decoding`'s beam search calls (without a decoder cache).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat.layers import SinusoidalPositionalEncoding
from heat.models import Seq2SeqConfig


class TorchTransformerReference(nn.Module):
    """`nn.Transformer(batch_first=True)` with the embeddings of `Seq2SeqTransformer`."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=c.d_model**-0.5)
        self.positions = SinusoidalPositionalEncoding(c.d_model, c.max_length)
        self.embedding_dropout = nn.Dropout(c.dropout)
        with warnings.catch_warnings():  # pre-norm layers cannot use nested tensors: fine
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.transformer = nn.Transformer(
                d_model=c.d_model, nhead=c.num_heads, num_encoder_layers=c.num_encoder_layers,
                num_decoder_layers=c.num_decoder_layers, dim_feedforward=c.ffn_dim,
                dropout=c.dropout, batch_first=True, norm_first=c.norm_first)
        self.resolved_attention = {"reference": {"name": "torch.nn.Transformer"}}

    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embedding(tokens) * math.sqrt(self.config.d_model)  # (B, L, D)
        return self.embedding_dropout(x + self.positions(tokens.shape[1], 0, x.dtype))

    def padding_mask(self, tokens: Tensor) -> Tensor:
        """(B, L) True at padding."""
        return tokens.eq(self.config.pad_id)

    def encode(self, src: Tensor, src_padding_mask: Tensor) -> Tensor:
        """src: (B, S) -> memory (B, S, D)."""
        return self.transformer.encoder(self._embed(src), src_key_padding_mask=src_padding_mask)

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_padding_mask: Tensor,
               cache: None = None, tgt_padding_mask: Tensor | None = None) -> Tensor:
        """tgt_in: (B, T), the whole prefix (no cache: `new_decoder_cache` gives None, so
        `heat.decoding` recomputes each step) -> logits (B, T, V)."""
        if cache is not None:
            raise ValueError("the reference model has no decoder cache")
        causal = nn.Transformer.generate_square_subsequent_mask(
            tgt_in.shape[1], device=tgt_in.device, dtype=torch.bool)  # (T, T) True: hidden
        h = self.transformer.decoder(self._embed(tgt_in), memory, tgt_mask=causal,
                                     tgt_key_padding_mask=tgt_padding_mask,
                                     memory_key_padding_mask=memory_padding_mask,
                                     tgt_is_causal=True)  # (B, T, D)
        return F.linear(h, self.embedding.weight)  # (B, T, V)

    def new_decoder_cache(self) -> None:
        return None

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src: (B, S), tgt_in: (B, T) -> logits (B, T, V): `nn.Transformer.forward` as its
        encoder and decoder calls."""
        src_pad = self.padding_mask(src)
        return self.decode(tgt_in, self.encode(src, src_pad), src_pad,
                           tgt_padding_mask=self.padding_mask(tgt_in))

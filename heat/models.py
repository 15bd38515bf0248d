"""The two models of DESIGN.md section 4 and their configs.

- `Seq2SeqTransformer`: encoder-decoder for translation; one shared vocabulary whose embedding is
  tied to the output projection; an attention variant per site (encoder self, decoder self,
  cross); incremental decoding through `heat.layers.DecoderCache` (search lives in
  `heat.decoding`).
- `EncoderClassifier`: the same encoder with token + segment embeddings and a pooled head.

Configs are keyword-only dataclasses validated in `__post_init__`: a bad value raises
`ConfigError` (a `ValueError`) naming the field, the value and what is allowed. Both extend
`Architecture` (sizes, dropout, norm placement, length), the one place those are declared; the
attention of each site is in `heat.sites`.

Shape convention: B batch, S source length, T target length, D d_model, V vocabulary,
C classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat.attention import AttentionKernel, AttentionSpec, SoftmaxSpec, build_attention, spec_to_dict
from heat.layers import (
    DecoderCache,
    DecoderLayer,
    EncoderLayer,
    SinusoidalPositionalEncoding,
    TransformerDecoder,
    TransformerEncoder,
)
from heat.sites import (
    SITES,
    AttentionSites,
    capabilities,
    check_fits_max_length,
    check_spec,
    resolve_sites,
)
from heat.validation import ConfigError, check_bool, check_choice, check_fraction, check_int

__all__ = [
    "SITES", "Architecture", "AttentionSites", "ClassifierConfig", "EncoderClassifier",
    "Seq2SeqConfig", "Seq2SeqTransformer", "resolve_sites",
]


# ---------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """A transformer's sizes and regularisation: everything of a model but its vocabulary, its
    classes and its attention. Declared once here; both model configs extend it and the
    pipeline's `model` config section is this class."""

    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    """Encoder layers (the classifier's only stack)."""
    num_decoder_layers: int = 6
    """Decoder layers (translation only)."""
    ffn_dim: int = 2048
    """Hidden width of the position-wise feed-forward layers."""
    dropout: float = 0.1
    norm_first: bool = True
    """Pre-norm (True) or post-norm (False, the original Transformer)."""
    max_length: int = 256
    """Longest sequence (bos/eos, all segments and separators included) the model accepts."""
    label_smoothing: float = 0.1
    """Translation loss only (the classifier's cross-entropy is unsmoothed)."""
    pooling: Literal["mean", "first"] = "mean"
    """Classification: mean over non-padding positions, or the first token (a CLS symbol)."""
    num_segments: int = 2
    """Classification: segment (sentence A / B) embeddings; 1 for single-sentence tasks."""

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers",
                     "ffn_dim", "num_segments"):
            check_int(name, getattr(self, name), 1)
        check_int("max_length", self.max_length, 2)
        if self.d_model % self.num_heads:
            raise ConfigError(
                "d_model", f"must be divisible by num_heads={self.num_heads}, got {self.d_model}"
            )
        check_fraction("dropout", self.dropout)
        check_fraction("label_smoothing", self.label_smoothing)
        check_bool("norm_first", self.norm_first)
        check_choice("pooling", self.pooling, ("mean", "first"))


def _check_ids(config: Seq2SeqConfig | ClassifierConfig, names: tuple[str, ...]) -> None:
    check_int("vocab_size", config.vocab_size, 1)
    check_int("pad_id", config.pad_id, 0, config.vocab_size - 1)
    for name in names:
        check_int(name, getattr(config, name), 0, config.vocab_size - 1)
        if getattr(config, name) == config.pad_id:
            # The loss ignores pad_id and decoding strips it: a shared id would vanish.
            raise ConfigError(name, f"must differ from pad_id={config.pad_id}")


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig(Architecture):
    vocab_size: int
    """Size of the shared source/target vocabulary."""
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    attention: AttentionSites = field(default_factory=AttentionSites)
    """Attention variant per site; see `AttentionSites.from_dict`."""

    @classmethod
    def build(cls, architecture: Architecture, *, vocab_size: int,
              attention: AttentionSites) -> Seq2SeqConfig:
        return cls(**_fields(architecture), vocab_size=vocab_size, attention=attention)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(self, ("bos_id", "eos_id"))
        if not isinstance(self.attention, AttentionSites):
            raise ConfigError(
                "attention",
                f"must be an AttentionSites (see AttentionSites.from_dict), got {self.attention!r}",
            )
        for site in SITES:
            spec = getattr(self.attention, site)
            if site == "decoder_self" and not capabilities(spec).causal:
                continue  # replaced by softmax when the model is built
            check_fits_max_length(f"attention.{site}", spec, self.max_length)


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(Architecture):
    """The encoder of `Architecture` (num_encoder_layers layers) with a pooled head."""

    vocab_size: int
    num_classes: int
    pad_id: int = 0
    attention_spec: AttentionSpec = field(default_factory=SoftmaxSpec)
    """Attention variant of every encoder layer."""

    @classmethod
    def build(cls, architecture: Architecture, *, vocab_size: int, num_classes: int,
              attention: AttentionSpec) -> ClassifierConfig:
        return cls(**_fields(architecture), vocab_size=vocab_size, num_classes=num_classes,
                   attention_spec=attention)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_ids(self, ())
        check_int("num_classes", self.num_classes, 2)
        check_spec("attention_spec", self.attention_spec)
        check_fits_max_length("attention_spec", self.attention_spec, self.max_length)


def _fields(architecture: Architecture) -> dict[str, Any]:
    return {f.name: getattr(architecture, f.name) for f in fields(Architecture)}


# ---------------------------------------------------------------------------------------------
# Models


def _build_kernels(
    spec: AttentionSpec, count: int, d_model: int, num_heads: int
) -> list[AttentionKernel]:
    """One kernel per layer of a site; the site's layers share one `shared` dict."""
    shared: dict[str, Any] = {}
    head_dim = d_model // num_heads
    return [
        build_attention(spec, head_dim=head_dim, num_heads=num_heads, shared=shared)
        for _ in range(count)
    ]


def _init_embedding(embedding: nn.Embedding, d_model: int) -> None:
    # std d^-1/2: the input, scaled by sqrt(d), has unit variance, and tied output logits
    # start small.
    nn.init.normal_(embedding.weight, mean=0.0, std=d_model**-0.5)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder transformer with a shared vocabulary and tied embeddings."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        sites = resolve_sites(config.attention)
        self.resolved_attention: dict[str, dict[str, Any]] = sites.to_dict()
        c = config
        # One matrix embeds source and target tokens and, transposed, produces the logits.
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        _init_embedding(self.embedding, c.d_model)
        self.positions = SinusoidalPositionalEncoding(c.d_model, c.max_length)
        self.embedding_dropout = nn.Dropout(c.dropout)
        encoder_kernels = _build_kernels(
            sites.encoder_self, c.num_encoder_layers, c.d_model, c.num_heads
        )
        self.encoder = TransformerEncoder(
            [
                EncoderLayer(c.d_model, c.num_heads, c.ffn_dim, c.dropout, c.norm_first, kernel)
                for kernel in encoder_kernels
            ],
            c.d_model, c.norm_first,
        )
        self_kernels = _build_kernels(
            sites.decoder_self, c.num_decoder_layers, c.d_model, c.num_heads
        )
        cross_kernels = _build_kernels(sites.cross, c.num_decoder_layers, c.d_model, c.num_heads)
        self.decoder = TransformerDecoder(
            [
                DecoderLayer(
                    c.d_model, c.num_heads, c.ffn_dim, c.dropout, c.norm_first, self_k, cross_k
                )
                for self_k, cross_k in zip(self_kernels, cross_kernels)
            ],
            c.d_model, c.norm_first,
        )

    def embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """tokens: (B, L) -> (B, L, D) scaled embeddings plus positions offset .. offset + L - 1."""
        x = self.embedding(tokens) * math.sqrt(self.config.d_model)  # (B, L, D)
        x = x + self.positions(tokens.shape[1], offset, x.dtype)  # (L, D) broadcast over B
        return self.embedding_dropout(x)

    def padding_mask(self, tokens: Tensor) -> Tensor:
        """(B, L) bool, True at pad_id."""
        return tokens.eq(self.config.pad_id)

    def encode(self, src: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """src: (B, S) token ids -> memory (B, S, D). A None mask is derived from pad_id."""
        if src_padding_mask is None:
            src_padding_mask = self.padding_mask(src)
        return self.encoder(self.embed(src), src_padding_mask)

    def new_decoder_cache(self) -> DecoderCache:
        return DecoderCache.empty(self.config.num_decoder_layers)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Logits (B, T, V) for target inputs tgt_in (B, T) given the memory (B, S, D).

        Without a cache, tgt_in is the whole target prefix (padding derived from pad_id). With a
        cache, tgt_in holds only the positions after `cache.position` (normally one token); the
        cache is updated in place and its position advanced.
        """
        offset = 0 if cache is None else cache.position
        padding_mask = self.padding_mask(tgt_in) if cache is None else None
        x = self.embed(tgt_in, offset)  # (B, T, D)
        h = self.decoder(x, memory, memory_padding_mask, padding_mask, cache)  # (B, T, D)
        if cache is not None:
            cache.position += tgt_in.shape[1]
        return F.linear(h, self.embedding.weight)  # (B, T, V): tied output projection

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src: (B, S), tgt_in: (B, T) (bos + target) -> logits (B, T, V)."""
        src_padding_mask = self.padding_mask(src)
        memory = self.encode(src, src_padding_mask)
        return self.decode(tgt_in, memory, src_padding_mask)

    def loss(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, reduction: str = "mean") -> Tensor:
        """Label-smoothed cross-entropy of tgt_out (B, T) (target + eos), pad positions ignored.

        reduction='mean' (default): averaged over the non-pad target tokens of this batch.
        reduction='sum': summed over them, for token-budget batches and gradient accumulation,
        where the trainer divides by the total token count, `(tgt_out != pad_id).sum()`.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        logits = self(src, tgt_in)  # (B, T, V)
        return F.cross_entropy(
            logits.flatten(0, 1),  # (B * T, V)
            tgt_out.flatten(),  # (B * T,)
            ignore_index=self.config.pad_id,
            label_smoothing=self.config.label_smoothing,
            reduction=reduction,
        )


class EncoderClassifier(nn.Module):
    """Transformer encoder over token + segment + position embeddings, pooled, then classified."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.resolved_attention: dict[str, dict[str, Any]] = {
            "encoder_self": spec_to_dict(c.attention_spec)
        }
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model)
        _init_embedding(self.token_embedding, c.d_model)
        self.segment_embedding = nn.Embedding(c.num_segments, c.d_model)
        self.positions = SinusoidalPositionalEncoding(c.d_model, c.max_length)
        self.embedding_dropout = nn.Dropout(c.dropout)
        kernels = _build_kernels(c.attention_spec, c.num_encoder_layers, c.d_model, c.num_heads)
        self.encoder = TransformerEncoder(
            [
                EncoderLayer(c.d_model, c.num_heads, c.ffn_dim, c.dropout, c.norm_first, kernel)
                for kernel in kernels
            ],
            c.d_model, c.norm_first,
        )
        self.head = nn.Sequential(
            nn.Linear(c.d_model, c.d_model),
            nn.Tanh(),
            nn.Dropout(c.dropout),
            nn.Linear(c.d_model, c.num_classes),
        )

    def _embed(self, input_ids: Tensor, segment_ids: Tensor | None) -> Tensor:
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        x = self.token_embedding(input_ids) * math.sqrt(self.config.d_model)  # (B, L, D)
        x = x + self.segment_embedding(segment_ids)  # (B, L, D)
        x = x + self.positions(input_ids.shape[1], dtype=x.dtype)  # (L, D) broadcast over B
        return self.embedding_dropout(x)

    def _pool(self, h: Tensor, padding_mask: Tensor) -> Tensor:
        """h: (B, L, D) -> (B, D)."""
        if self.config.pooling == "first":
            return h[:, 0]
        keep = (~padding_mask).unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        # clamp: an all-padding row pools to zeros instead of NaN.
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None) -> Tensor:
        """input_ids, segment_ids: (B, L) -> logits (B, C). Padding is derived from pad_id."""
        padding_mask = input_ids.eq(self.config.pad_id)  # (B, L)
        h = self.encoder(self._embed(input_ids, segment_ids), padding_mask)  # (B, L, D)
        return self.head(self._pool(h, padding_mask))

    def loss(
        self, input_ids: Tensor, labels: Tensor, segment_ids: Tensor | None = None
    ) -> Tensor:
        """Cross-entropy averaged over the batch; labels (B,) in [0, num_classes)."""
        return F.cross_entropy(self(input_ids, segment_ids), labels)

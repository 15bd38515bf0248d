"""The two models of DESIGN.md section 4 and their configs.

- `Seq2SeqTransformer`: encoder-decoder for translation; one shared vocabulary whose embedding is
  tied to the output projection; an attention variant per site (encoder self, decoder self,
  cross); incremental decoding through `heat.layers.DecoderCache` (search lives in
  `heat.decoding`).
- `EncoderClassifier`: the same encoder with token + segment embeddings and a pooled head.

Configs are keyword-only dataclasses validated in `__post_init__`: a bad value raises
`ConfigError` (a `ValueError`) naming the field, the value and what is allowed.

Shape convention: B batch, S source length, T target length, D d_model, V vocabulary,
C classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat.attention import (
    REGISTRY,
    AttentionKernel,
    AttentionSpec,
    Capabilities,
    SoftmaxSpec,
    SpecError,
    build_attention,
    spec_from_dict,
    spec_to_dict,
)
from heat.layers import (
    DecoderCache,
    DecoderLayer,
    EncoderLayer,
    SinusoidalPositionalEncoding,
    TransformerDecoder,
    TransformerEncoder,
)
from heat.validation import ConfigError, check_bool, check_fraction, check_int

logger = logging.getLogger(__name__)


def _check_int(owner: str, name: str, value: Any, low: int, high: int | None = None) -> None:
    check_int(f"{owner}.{name}", value, low, high)


def _check_fraction(owner: str, name: str, value: Any) -> None:
    check_fraction(f"{owner}.{name}", value)


def _check_common(owner: str, config: Any) -> None:
    """The fields both configs share: sizes, dropout, norm placement, length, padding id."""
    for name in ("vocab_size", "d_model", "num_heads", "ffn_dim", "max_length"):
        _check_int(owner, name, getattr(config, name), 1)
    if config.d_model % config.num_heads:
        raise ConfigError(
            f"{owner}.d_model",
            f"must be divisible by num_heads={config.num_heads}, got {config.d_model}",
        )
    _check_fraction(owner, "dropout", config.dropout)
    check_bool(f"{owner}.norm_first", config.norm_first)
    _check_int(owner, "pad_id", config.pad_id, 0, config.vocab_size - 1)


def _capabilities(spec: AttentionSpec) -> Capabilities:
    return REGISTRY[spec.name].kernel.capabilities


def _check_spec(field_name: str, spec: Any) -> None:
    spec_classes = tuple(entry.spec for entry in REGISTRY.values())
    if not isinstance(spec, spec_classes):
        raise ConfigError(
            field_name,
            f"must be an attention spec ({', '.join(c.__name__ for c in spec_classes)}; build one "
            f"from a mapping with heat.attention.spec_from_dict), got {spec!r}",
        )


def _check_fits_max_length(field_name: str, spec: AttentionSpec, max_length: int) -> None:
    """Variants with a fixed key length (Linformer) must accept the model's longest sequence."""
    if _capabilities(spec).fixed_max_length and spec.max_length < max_length:
        raise ConfigError(
            f"{field_name}.max_length",
            f"{spec.name} max_length={spec.max_length} is smaller than the model's "
            f"max_length={max_length}; it must be >= {max_length}",
        )


# ---------------------------------------------------------------------------------------------
# Configs


SITES = ("encoder_self", "decoder_self", "cross")


@dataclass(frozen=True, kw_only=True)
class AttentionSites:
    """The attention variant of each site of the seq2seq model."""

    encoder_self: AttentionSpec = field(default_factory=SoftmaxSpec)
    """Encoder self-attention (bidirectional)."""
    decoder_self: AttentionSpec = field(default_factory=SoftmaxSpec)
    """Decoder self-attention (causal); a variant that cannot be causal falls back to softmax."""
    cross: AttentionSpec = field(default_factory=SoftmaxSpec)
    """Decoder-to-encoder attention; queries are target positions, keys the source."""

    def __post_init__(self) -> None:
        for site in SITES:
            _check_spec(f"attention.{site}", getattr(self, site))
        if not _capabilities(self.cross).cross:
            raise ConfigError(
                "attention.cross", f"variant '{self.cross.name}' does not support cross-attention"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Mapping[str, Any]] | None) -> AttentionSites:
        """From `{"encoder_self": {"name": "heat", "rank": 8}, ...}`; missing sites are softmax."""
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("attention", f"must be a mapping of site -> spec, got {raw!r}")
        unknown = sorted(set(raw) - set(SITES))
        if unknown:
            raise ConfigError(
                f"attention.{unknown[0]}", f"unknown attention site; allowed: {', '.join(SITES)}"
            )
        specs = {}
        for site, spec in raw.items():
            try:
                specs[site] = spec_from_dict(spec)
            except SpecError as err:
                raise ConfigError(f"attention.{site}", str(err)) from err
        return cls(**specs)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {site: spec_to_dict(getattr(self, site)) for site in SITES}


def resolve_sites(sites: AttentionSites) -> AttentionSites:
    """The sites as the model builds them; decoder sites a variant cannot serve become softmax.

    Decoder self-attention needs a causal variant: Linformer and Nystrom mix information across
    key positions before the softmax, which a causal mask cannot undo. Decoder cross-attention
    needs a query-independent variant: Nystrom's query landmarks pool over all target positions,
    so the output at t would see later target tokens in teacher-forced training. Both still
    serve the encoder; Linformer also serves cross-attention.
    """
    decoder_self, cross = sites.decoder_self, sites.cross
    if not _capabilities(decoder_self).causal:
        logger.warning(
            "decoder self-attention: %s cannot be causal; using softmax", decoder_self.name
        )
        decoder_self = SoftmaxSpec()
    if not _capabilities(cross).query_independent:
        logger.warning(
            "decoder cross-attention: %s pools over the target positions (later target tokens "
            "would leak into earlier ones); using softmax", cross.name
        )
        cross = SoftmaxSpec()
    return AttentionSites(encoder_self=sites.encoder_self, decoder_self=decoder_self, cross=cross)


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig:
    vocab_size: int
    """Size of the shared source/target vocabulary."""
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    ffn_dim: int = 2048
    """Hidden width of the position-wise feed-forward layers."""
    dropout: float = 0.1
    norm_first: bool = True
    """Pre-norm (True) or post-norm (False, the original Transformer)."""
    max_length: int = 256
    """Longest source or target sequence (bos/eos included) the model accepts."""
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    label_smoothing: float = 0.1
    attention: AttentionSites = field(default_factory=AttentionSites)
    """Attention variant per site; see `AttentionSites.from_dict`."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_common(owner, self)
        _check_int(owner, "num_encoder_layers", self.num_encoder_layers, 1)
        _check_int(owner, "num_decoder_layers", self.num_decoder_layers, 1)
        for name in ("bos_id", "eos_id"):
            _check_int(owner, name, getattr(self, name), 0, self.vocab_size - 1)
            if getattr(self, name) == self.pad_id:
                # The loss ignores pad_id and decoding strips it: a shared id would vanish.
                raise ConfigError(f"{owner}.{name}", f"must differ from pad_id={self.pad_id}")
        _check_fraction(owner, "label_smoothing", self.label_smoothing)
        if not isinstance(self.attention, AttentionSites):
            raise ConfigError(
                f"{owner}.attention",
                f"must be an AttentionSites (see AttentionSites.from_dict), got {self.attention!r}",
            )
        for site in SITES:
            spec = getattr(self.attention, site)
            if site == "decoder_self" and not _capabilities(spec).causal:
                continue  # replaced by softmax when the model is built
            _check_fits_max_length(f"attention.{site}", spec, self.max_length)


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    vocab_size: int
    num_classes: int
    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    norm_first: bool = True
    max_length: int = 512
    """Longest input (all segments and separators included) the model accepts."""
    pad_id: int = 0
    num_segments: int = 2
    """Segment (sentence A / B) embeddings; 1 for single-sentence tasks."""
    pooling: str = "mean"
    """'mean': mean over non-padding positions; 'first': the first token (a CLS symbol)."""
    attention_spec: AttentionSpec = field(default_factory=SoftmaxSpec)
    """Attention variant of every encoder layer."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_common(owner, self)
        _check_int(owner, "num_layers", self.num_layers, 1)
        _check_int(owner, "num_classes", self.num_classes, 2)
        _check_int(owner, "num_segments", self.num_segments, 1)
        if self.pooling not in ("mean", "first"):
            raise ConfigError(
                f"{owner}.pooling", f"must be one of mean, first; got {self.pooling!r}"
            )
        _check_spec(f"{owner}.attention_spec", self.attention_spec)
        _check_fits_max_length(f"{owner}.attention_spec", self.attention_spec, self.max_length)


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
        kernels = _build_kernels(c.attention_spec, c.num_layers, c.d_model, c.num_heads)
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

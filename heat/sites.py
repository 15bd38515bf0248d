"""Where a seq2seq model uses attention: encoder self, decoder self and cross, a spec per site.

`AttentionSites` holds one validated spec per site; `resolve_sites` gives the sites as the model
builds them (a decoder site a variant cannot serve falls back to softmax). The checks here read
each variant's declared `Capabilities` from the registry, so a new variant needs no change here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from heat.attention import (
    REGISTRY,
    AttentionSpec,
    Capabilities,
    SoftmaxSpec,
    SpecError,
    spec_from_dict,
    spec_to_dict,
)
from heat.validation import ConfigError

logger = logging.getLogger(__name__)


def capabilities(spec: AttentionSpec) -> Capabilities:
    return REGISTRY[spec.name].kernel.capabilities


def check_spec(field_name: str, spec: Any) -> None:
    spec_classes = tuple(entry.spec for entry in REGISTRY.values())
    if not isinstance(spec, spec_classes):
        raise ConfigError(
            field_name,
            f"must be an attention spec ({', '.join(c.__name__ for c in spec_classes)}; build one "
            f"from a mapping with heat.attention.spec_from_dict), got {spec!r}",
        )


def check_fits_max_length(field_name: str, spec: AttentionSpec, max_length: int) -> None:
    """Variants with a fixed key length (Linformer) must accept the model's longest sequence."""
    if capabilities(spec).fixed_max_length and spec.max_length < max_length:
        raise ConfigError(
            f"{field_name}.max_length",
            f"{spec.name} max_length={spec.max_length} is smaller than the model's "
            f"max_length={max_length}; it must be >= {max_length}",
        )


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
            check_spec(f"attention.{site}", getattr(self, site))
        if not capabilities(self.cross).cross:
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
            except SpecError as error:
                raise error.renamed(f"attention.{site}" + _parameter_suffix(error)) from None
        return cls(**specs)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {site: spec_to_dict(getattr(self, site)) for site in SITES}


def resolve_sites(sites: AttentionSites, *, quiet: bool = False) -> AttentionSites:
    """The sites as the model builds them; decoder sites a variant cannot serve become softmax.

    Decoder self-attention needs a causal variant: Linformer and Nystrom mix information across
    key positions before the softmax, which a causal mask cannot undo. Decoder cross-attention
    needs a query-independent variant: Nystrom's query landmarks pool over all target positions,
    so the output at t would see later target tokens in teacher-forced training. Both still
    serve the encoder; Linformer also serves cross-attention.
    """
    decoder_self, cross = sites.decoder_self, sites.cross
    if not capabilities(decoder_self).causal:
        (logger.debug if quiet else logger.warning)(
            "decoder self-attention: %s cannot be causal; using softmax", decoder_self.name
        )
        decoder_self = SoftmaxSpec()
    if not capabilities(cross).query_independent:
        (logger.debug if quiet else logger.warning)(
            "decoder cross-attention: %s pools over the target positions (later target tokens "
            "would leak into earlier ones); using softmax", cross.name
        )
        cross = SoftmaxSpec()
    return AttentionSites(encoder_self=sites.encoder_self, decoder_self=decoder_self, cross=cross)


def _parameter_suffix(error: SpecError) -> str:
    """'.rank' for a SpecError on 'heat.rank', '.name' for 'attention.name', '' for 'attention'."""
    _, dot, parameter = error.field.partition(".")
    return f".{parameter}" if dot else ""

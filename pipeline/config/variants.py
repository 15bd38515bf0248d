"""The `variants` section: label -> attention, parsed once into typed specs that travel, unchanged,
from the config to the kernels.

A variant is written as one spec (`{name: heat, rank: 8}`: that spec at every site) or as a
mapping of site -> spec (`{encoder_self: {...}, cross: {...}}`; a site left out is softmax). A
translation task's model takes the variant's `AttentionSites`; a classification task's encoder
takes its encoder_self spec. Errors name the key as written: `variants.heat.rank`,
`variants.lin.cross.rank`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heat.attention import AttentionSpec, SpecError, spec_from_dict, spec_to_dict
from heat.models import (
    SITES,
    Architecture,
    AttentionSites,
    ClassifierConfig,
    Seq2SeqConfig,
    resolve_sites,
)
from heat.validation import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Labels of variants, tasks and runs: they name folders and MLflow runs."""


@dataclass(frozen=True)
class VariantAttention:
    """A variant of the config's `variants` section, parsed: its sites and how it was written."""

    label: str
    sites: AttentionSites
    written: tuple[str, ...]
    """The sites the config names; empty when it was written as one spec for every site."""

    def for_task(self, kind: str) -> AttentionSites | AttentionSpec:
        """What a task's model takes: the sites (translation) or the encoder's spec."""
        if kind == "translation":
            return self.sites
        if self.written and "encoder_self" not in self.written:
            raise ConfigError(f"variants.{self.label}", "a classification task uses a variant's "
                                                        "encoder_self spec, and this one has none")
        return self.sites.encoder_self

    def to_dict(self) -> dict[str, Any]:
        """As written, with every parameter's value filled in (for the resolved config)."""
        if not self.written:
            return spec_to_dict(self.sites.encoder_self)
        return {site: spec_to_dict(getattr(self.sites, site)) for site in self.written}


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One attention variant of one task, as its model takes it."""

    name: str
    """The label: names folders and MLflow runs."""
    attention: AttentionSites | AttentionSpec
    """Translation: a spec per site; classification: the encoder's spec."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise ConfigError("variants", f"variant name must match {NAME.pattern} (it names "
                                          f"folders and runs), got {self.name!r}")
        if not isinstance(self.attention, AttentionSites | AttentionSpec):
            raise ConfigError(f"variants.{self.name}", f"must hold parsed attention "
                                                       f"(AttentionSites or a spec), got "
                                                       f"{self.attention!r}")

    def attention_ran(self) -> dict[str, str]:
        """Per site, the attention the model runs (`heat.sites.resolve_sites`) as
        `nystrom landmarks=8 ...`, marked `(fallback from nystrom)` where the model replaced
        the variant written for that site: what MLflow's params and `check` show."""
        if isinstance(self.attention, AttentionSpec):
            return {"encoder_self": _describe(self.attention)}
        resolved = resolve_sites(self.attention, quiet=True)
        ran = {}
        for site in SITES:
            asked, used = getattr(self.attention, site), getattr(resolved, site)
            fallback = f" (fallback from {asked.name})" if used != asked else ""
            ran[site] = _describe(used) + fallback
        return ran

    def attention_names(self) -> set[str]:
        """The names of the attention the model runs at its sites (fallbacks resolved)."""
        if isinstance(self.attention, AttentionSpec):
            return {self.attention.name}
        resolved = resolve_sites(self.attention, quiet=True)
        return {getattr(resolved, site).name for site in SITES}

    @classmethod
    def parse(cls, name: str, attention: Mapping[str, Any], kind: str) -> Variant:
        """From plain values, as a script or a Tune trial writes them: site -> spec
        (translation) or one spec (classification). Errors are keyed
        `variants.<name>.attention.<site>...` (translation) or `variants.<name>.<spec field>`."""
        try:
            if kind == "translation":
                return cls(name=name, attention=AttentionSites.from_dict(attention))
            return cls(name=name, attention=spec_from_dict(attention))
        except SpecError as error:
            raise error.within(f"variants.{name}") from None
        except ConfigError as error:
            if error.field == "variants":  # the name itself
                raise
            raise error.within(f"variants.{name}") from None

    def attention_dict(self) -> dict[str, Any]:
        """The attention as plain values (params, hashes, the saved model's config)."""
        if isinstance(self.attention, AttentionSites):
            return self.attention.to_dict()
        return spec_to_dict(self.attention)


def parse_variants(raw: Any) -> dict[str, VariantAttention]:
    """The `variants` mapping, every spec and site checked; errors keyed as written."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("variants", f"must be a non-empty mapping of variant label -> "
                                      f"attention spec, got {raw!r}")
    return {_label(label): _parse(label, attention) for label, attention in raw.items()}


def _label(label: Any) -> str:
    if not isinstance(label, str) or not NAME.fullmatch(label):
        raise ConfigError(f"variants.{label}", f"a variant label must match {NAME.pattern} (it "
                                               f"names folders and MLflow runs)")
    return label


def _parse(label: str, attention: Any) -> VariantAttention:
    key = f"variants.{label}"
    if not isinstance(attention, Mapping):
        raise ConfigError(key, f"must be an attention spec such as {{name: heat, rank: 8}} or a "
                               f"mapping of site ({', '.join(SITES)}) -> spec, got {attention!r}")
    if "name" in attention:  # one spec, the same at every site
        try:
            spec = spec_from_dict(attention)
        except SpecError as error:
            raise error.renamed(key + _parameter(error)) from None
        raw_sites: Mapping[str, Any] = {site: spec_to_dict(spec) for site in SITES}
        written: tuple[str, ...] = ()
    else:
        unknown = sorted(set(attention) - set(SITES))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", f"unknown attention site; a variant is one "
                                                      f"spec (with a 'name' key) or a mapping of "
                                                      f"site -> spec with sites {', '.join(SITES)}")
        raw_sites, written = attention, tuple(site for site in SITES if site in attention)
    try:
        sites = AttentionSites.from_dict(raw_sites)
    except ConfigError as error:  # 'attention.cross.rank', or a site the variant cannot serve
        raise error.renamed(key + error.field.removeprefix("attention")) from None
    _check_written_sites(key, sites, written)
    return VariantAttention(label, sites, written)


def _check_written_sites(key: str, sites: AttentionSites, written: tuple[str, ...]) -> None:
    """A site the config names must be served by the variant it names: the model would build
    softmax there instead (`heat.sites.resolve_sites`), trained under the variant's label. A
    variant written as one spec for every site keeps that documented fallback."""
    resolved = resolve_sites(sites, quiet=True)
    for site in written:
        spec = getattr(sites, site)
        if getattr(resolved, site) != spec:
            need = ("a causal variant" if site == "decoder_self" else
                    "a variant whose output at a query depends on that query and the keys only")
            raise ConfigError(f"{key}.{site}", f"{spec.name} cannot serve {site}: it needs "
                                               f"{need}; name another variant there, or write "
                                               f"the variant as one spec (its decoder sites then "
                                               f"fall back to softmax)")


def check_devices(variant: Variant, kind: str, use_gpu: bool) -> None:
    """Every spec of the variant can run where the task trains (`AttentionSpec.check_runs_on`):
    a SpecError keyed `variants.<label>[.<site>].<parameter>`."""
    device = "cuda" if use_gpu else "cpu"
    if isinstance(variant.attention, AttentionSpec):
        placed = [("", variant.attention, False)]
    else:
        written = variant.attention
        one_spec = len({getattr(written, site) for site in SITES}) == 1  # keyed as written
        sites = resolve_sites(written, quiet=True)
        placed = [(site, getattr(sites, site), site == "decoder_self") for site in SITES]
    for site, spec, causal in placed:
        try:
            spec.check_runs_on(device, causal)
        except SpecError as error:
            key = f"variants.{variant.name}{'' if not site or one_spec else '.' + site}"
            where = f"at {site}: " if site else ""
            raise ConfigError(f"{key}{_parameter(error)}", where + error.message) from None


def _parameter(error: SpecError) -> str:
    """'.rank' for a SpecError about 'heat.rank', '.name' for 'attention.name', '' otherwise."""
    _, dot, parameter = error.field.partition(".")
    return f".{parameter}" if dot else ""


def model_config(
    kind: str, model: Architecture, attention: AttentionSites | AttentionSpec, *,
    vocab_size: int, num_labels: int | None,
) -> Seq2SeqConfig | ClassifierConfig:
    """The `heat.models` config of one variant of a task (ConfigError as `heat.models` raises)."""
    if kind == "translation":
        assert isinstance(attention, AttentionSites)
        return Seq2SeqConfig.build(model, vocab_size=vocab_size, attention=attention)
    assert isinstance(attention, AttentionSpec) and num_labels is not None
    return ClassifierConfig.build(model, vocab_size=vocab_size, num_classes=num_labels,
                                  attention=attention)


def fit_error(variant: str, error: ConfigError) -> ConfigError:
    """A model-config error as the config key to fix: the variant's attention (its field starts
    with 'attention', e.g. 'attention.encoder_self.max_length', 'attention_spec.max_length')
    or the task's model section (returned with the field unchanged, for the caller to nest)."""
    if not error.field.startswith("attention"):
        return error
    rest = error.field.removeprefix("attention_spec").removeprefix("attention")
    return ConfigError(f"variants.{variant}{rest}", error.message)


def _describe(spec: AttentionSpec) -> str:
    """`heat rank=8 basis=svd ...`: a spec's name and every parameter."""
    values = spec_to_dict(spec)
    name = values.pop("name")
    return " ".join([name, *(f"{key}={value}" for key, value in values.items())])

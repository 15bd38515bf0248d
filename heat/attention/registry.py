"""The variant registry: name -> (spec class, kernel class), and everything that looks variants up.

Kernels register themselves with `@register(SpecClass)` in their own module; `build_attention(spec,
...)` is the one way the rest of the code constructs a kernel, `spec_from_dict` the one way a config
mapping becomes a spec. `registered(...)` registers a variant for the length of a `with` block
(tests that add a variant of their own).

Layering: this module imports only `specs`. It knows kernel classes through `KernelClass`, the few
attributes it reads; `base` (the kernel base class, whose errors list the causal-capable variants)
imports this module, not the other way round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, TypeVar

from heat.attention.specs import AttentionSpec, SpecError


class KernelCapabilities(Protocol):
    causal: bool


class KernelClass(Protocol):
    """What the registry reads of a kernel class (a `heat.attention.base.AttentionKernel`
    subclass): its capabilities, and its constructor."""

    name: ClassVar[str]
    capabilities: ClassVar[KernelCapabilities]

    def __init__(
        self, spec: Any, *, head_dim: int, num_heads: int, shared: dict[str, Any] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class VariantEntry:
    spec: type[AttentionSpec]
    kernel: type[KernelClass]

    @property
    def name(self) -> str:
        return self.spec.name


REGISTRY: dict[str, VariantEntry] = {}

K = TypeVar("K", bound=type)


def register(spec_cls: type[AttentionSpec]) -> Callable[[K], K]:
    """Class decorator: register a kernel class under its spec's name."""

    def decorate(kernel_cls: K) -> K:
        add(spec_cls, kernel_cls)
        return kernel_cls

    return decorate


def add(spec_cls: type[AttentionSpec], kernel_cls: type) -> VariantEntry:
    """Register `kernel_cls` for `spec_cls` (what `@register` does)."""
    if not (isinstance(spec_cls, type) and issubclass(spec_cls, AttentionSpec)):
        raise TypeError(f"{spec_cls!r} is not an AttentionSpec subclass")
    name = getattr(spec_cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{spec_cls.__name__} has no `name: ClassVar[str]`")
    if name in REGISTRY:
        raise ValueError(f"attention variant '{name}' registered twice")
    kernel_cls.name = name  # type: ignore[attr-defined]
    REGISTRY[name] = entry = VariantEntry(spec=spec_cls, kernel=kernel_cls)
    return entry


def unregister(name: str) -> VariantEntry:
    """Remove a registered variant (the inverse of `register`); returns its entry."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise KeyError(f"attention variant '{name}' is not registered")
    return REGISTRY.pop(name)


@contextmanager
def registered(spec_cls: type[AttentionSpec], kernel_cls: type) -> Iterator[VariantEntry]:
    """Register a variant for the length of a `with` block (a test's own variant)."""
    entry = add(spec_cls, kernel_cls)
    try:
        yield entry
    finally:
        if REGISTRY.get(entry.name) is entry:
            unregister(entry.name)


def build_attention(
    spec: AttentionSpec,
    *,
    head_dim: int,
    num_heads: int,
    shared: dict[str, Any] | None = None,
) -> Any:
    """Construct the kernel a spec describes (an `AttentionKernel`).

    `shared` is a dict owned by the model and passed to every site of one kind (e.g. all encoder
    self-attention layers); kernels that share parameters across layers (Linformer with
    sharing='layer') keep them there.
    """
    entry = REGISTRY.get(getattr(spec, "name", None))
    if entry is None or not isinstance(spec, entry.spec):
        raise ValueError(f"no attention variant registered for spec {spec!r}")
    return entry.kernel(spec, head_dim=head_dim, num_heads=num_heads, shared=shared)


def variant_names() -> list[str]:
    """The registered variants' names, sorted."""
    return sorted(REGISTRY)


def causal_variant_names() -> list[str]:
    """The names of the variants that support causal attention, sorted."""
    return sorted(name for name, entry in REGISTRY.items() if entry.kernel.capabilities.causal)


def ordered_variants() -> list[VariantEntry]:
    """The registered variants in listing order (`AttentionSpec.listing_order`, then name)."""
    return sorted(REGISTRY.values(), key=lambda entry: (entry.spec.listing_order, entry.name))


def spec_from_dict(raw: Mapping[str, Any]) -> AttentionSpec:
    """Build a spec from a plain mapping such as `{"name": "heat", "rank": 8}`.

    Unknown variants and unknown keys raise `SpecError` listing what is allowed.
    """
    if not isinstance(raw, Mapping):
        raise SpecError("attention", f"must be a mapping with a 'name' key, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or name not in REGISTRY:
        raise SpecError(
            "attention.name", f"unknown variant {name!r}; allowed: {', '.join(sorted(REGISTRY))}"
        )
    spec_cls = REGISTRY[name].spec
    allowed = [f.name for f in dataclasses.fields(spec_cls)]
    unknown = sorted(set(raw) - set(allowed) - {"name"})
    if unknown:
        raise SpecError(
            f"{name}.{unknown[0]}",
            f"unknown parameter for variant '{name}'; allowed: {', '.join(allowed) or '(none)'}",
        )
    return spec_cls(**{key: value for key, value in raw.items() if key != "name"})


def spec_to_dict(spec: AttentionSpec) -> dict[str, Any]:
    """The inverse of `spec_from_dict` (for tracking the resolved config)."""
    return {"name": spec.name, **dataclasses.asdict(spec)}

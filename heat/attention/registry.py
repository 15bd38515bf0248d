"""The variant registry: name -> (spec class, kernel class).

Kernels register themselves with `@register(SpecClass)`; `build_attention(spec, ...)` is the one
way the rest of the code constructs a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from heat.attention.base import AttentionKernel
from heat.attention.specs import AttentionSpec


@dataclass(frozen=True)
class VariantEntry:
    spec: type
    kernel: type[AttentionKernel]


REGISTRY: dict[str, VariantEntry] = {}

K = TypeVar("K", bound=type[AttentionKernel])


def register(spec_cls: type) -> Callable[[K], K]:
    """Class decorator: register a kernel class under its spec's name."""

    def decorate(kernel_cls: K) -> K:
        name = spec_cls.name
        if name in REGISTRY:
            raise ValueError(f"attention variant '{name}' registered twice")
        kernel_cls.name = name
        REGISTRY[name] = VariantEntry(spec=spec_cls, kernel=kernel_cls)
        return kernel_cls

    return decorate


def build_attention(
    spec: AttentionSpec,
    *,
    head_dim: int,
    num_heads: int,
    shared: dict[str, Any] | None = None,
) -> AttentionKernel:
    """Construct the kernel a spec describes.

    `shared` is a dict owned by the model and passed to every site of one kind (e.g. all encoder
    self-attention layers); kernels that share parameters across layers (Linformer with
    sharing='layer') keep them there.
    """
    entry = REGISTRY.get(spec.name)
    if entry is None or not isinstance(spec, entry.spec):
        raise ValueError(f"no attention variant registered for spec {spec!r}")
    return entry.kernel(spec, head_dim=head_dim, num_heads=num_heads, shared=shared)


def variant_names() -> list[str]:
    return sorted(REGISTRY)

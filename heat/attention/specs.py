"""Typed, validated specs: one keyword-only dataclass per attention variant.

A spec is the whole description of a variant (its name and parameters); `build_attention` turns it
into a kernel. Specs validate themselves in `__post_init__`, so an impossible value fails when the
config loads, with a `SpecError` that names the parameter, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from heat.validation import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_int,
)


class SpecError(ConfigError):
    """A bad attention spec. `field` is the parameter's name (e.g. 'heat.rank')."""


def _check_int(spec: str, field: str, value: Any, low: int, high: int) -> None:
    _as_spec_error(check_int, f"{spec}.{field}", value, low, high)


def _check_float(spec: str, field: str, value: Any, low: float, high: float) -> None:
    _as_spec_error(check_float, f"{spec}.{field}", value, low, high)


def _check_choice(spec: str, field: str, value: Any, allowed: tuple[str, ...]) -> None:
    _as_spec_error(check_choice, f"{spec}.{field}", value, allowed)


def _check_bool(spec: str, field: str, value: Any) -> None:
    _as_spec_error(check_bool, f"{spec}.{field}", value)


def _as_spec_error(check, field: str, *args: Any) -> None:
    try:
        check(field, *args)
    except ConfigError as error:
        raise SpecError(error.field, str(error).split(": ", 1)[1]) from None


@dataclass(frozen=True, kw_only=True)
class SoftmaxSpec:
    """Exact softmax attention through `scaled_dot_product_attention`."""

    name: ClassVar[str] = "softmax"


@dataclass(frozen=True, kw_only=True)
class LinformerSpec:
    """Linformer: keys and values projected along the sequence axis to `rank` rows."""

    name: ClassVar[str] = "linformer"
    MAX_RANK: ClassVar[int] = 4096

    rank: int = 64
    """k, the number of projected key/value rows."""
    max_length: int = 512
    """L, the longest key sequence the projections accept (shorter ones are zero-padded)."""
    sharing: str = "kv"
    """'none': separate E and F; 'kv': E = F; 'layer': one E = F shared by every layer's site."""

    def __post_init__(self) -> None:
        _check_int(self.name, "max_length", self.max_length, 1, 1 << 20)
        _check_int(self.name, "rank", self.rank, 1, min(self.MAX_RANK, self.max_length))
        _check_choice(self.name, "sharing", self.sharing, ("none", "kv", "layer"))


@dataclass(frozen=True, kw_only=True)
class NystromSpec:
    """Nystromformer: segment-mean landmarks and an iterative pseudo-inverse."""

    name: ClassVar[str] = "nystrom"

    landmarks: int = 32
    """l, the number of landmarks; attention is exact when the key length m <= l."""
    pinv_iterations: int = 6
    """Newton-Schulz iterations of the Moore-Penrose pseudo-inverse."""
    conv_kernel: int = 0
    """Width of the depthwise convolution skip on V (odd); 0 disables it."""

    def __post_init__(self) -> None:
        _check_int(self.name, "landmarks", self.landmarks, 1, 4096)
        _check_int(self.name, "pinv_iterations", self.pinv_iterations, 1, 100)
        _check_int(self.name, "conv_kernel", self.conv_kernel, 0, 255)
        if self.conv_kernel and self.conv_kernel % 2 == 0:
            raise SpecError(f"{self.name}.conv_kernel", f"must be 0 or odd, got {self.conv_kernel}")


@dataclass(frozen=True, kw_only=True)
class HadamardSpec:
    """Exact per-channel (Hadamard-product) attention with bounded inputs R tanh(x / R)."""

    name: ClassVar[str] = "hadamard"

    bound: float = 3.0
    """R: queries and keys are squashed into [-R, R] per channel."""
    chunk_size: int = 64
    """Queries processed at a time; memory is O(chunk_size * m * d) per head."""

    def __post_init__(self) -> None:
        _check_float(self.name, "bound", self.bound, 0.0, 20.0)
        _check_int(self.name, "chunk_size", self.chunk_size, 1, 1 << 16)


@dataclass(frozen=True, kw_only=True)
class HeatSpec:
    """HEAT: `hadamard` with its kernel exp(ab) replaced by a rank-`rank` factorisation."""

    name: ClassVar[str] = "heat"
    MAX_TAYLOR_RANK: ClassVar[int] = 20
    IMPLEMENTATIONS: ClassVar[tuple[str, ...]] = ("auto", "fused", "folded", "features")

    rank: int = 8
    """r, the number of eigenfunctions (svd) or Taylor terms (taylor)."""
    basis: str = "svd"
    """'svd': input-weighted eigenfunctions of exp(ab); 'taylor': a^p / sqrt(p!), p < rank."""
    bound: float = 3.0
    """R, as in `hadamard`."""
    sigma: float = 1.0
    """Standard deviation of the Gaussian input measure the svd basis is optimal for."""
    quadrature_nodes: int = 24
    """Gauss-Hermite nodes the svd basis is computed on. The svd rank is bounded by the number of
    eigenvalues float64 resolves (16 for the defaults R=3, sigma=1, 24 nodes)."""
    chunk_size: int = 256
    """Positions per chunk of the causal prefix sums."""
    implementation: str = "auto"
    """'folded': moments times C C^T, Horner at the queries, no (n, d, r) tensor (DESIGN.md
    section 8), in eager PyTorch; 'fused': the same in fused kernels with a hand-written backward
    (C++ on the CPU, Triton on CUDA), an error where they are unavailable; 'auto': 'fused' where
    available, else 'folded'; 'features': materialise phi and run plain linear attention (the
    reference the others are tested against)."""

    def __post_init__(self) -> None:
        _check_choice(self.name, "basis", self.basis, ("svd", "taylor"))
        _check_choice(self.name, "implementation", self.implementation, self.IMPLEMENTATIONS)
        _check_float(self.name, "bound", self.bound, 0.0, 20.0)
        _check_float(self.name, "sigma", self.sigma, 0.0, 100.0)
        _check_int(self.name, "quadrature_nodes", self.quadrature_nodes, 2, 128)
        _check_int(self.name, "chunk_size", self.chunk_size, 1, 1 << 16)
        if self.basis == "taylor":
            _check_int(self.name, "rank", self.rank, 1, self.MAX_TAYLOR_RANK)
            return
        from heat.attention.exp_basis import svd_max_rank

        high = svd_max_rank(self.bound, self.sigma, self.quadrature_nodes)
        try:
            _check_int(self.name, "rank", self.rank, 1, high)
        except SpecError as error:
            raise SpecError(error.field, (
                f"{str(error).split(': ', 1)[1]} (ranks above {high} are float64 round-off of "
                f"the kernel with bound={self.bound}, sigma={self.sigma}, "
                f"quadrature_nodes={self.quadrature_nodes})"
            )) from None


@dataclass(frozen=True, kw_only=True)
class TaylorSpec:
    """exp(tau q.k) replaced by its order-`order` Taylor polynomial, as feature maps."""

    name: ClassVar[str] = "taylor"
    MAX_ORDER: ClassVar[int] = 4

    order: int = 2
    """p, the degree of the Taylor polynomial. Even orders keep every normaliser positive."""
    feature_dim: int = 0
    """If > 0, q and k are first projected (learned, per head shared) to this many features."""
    allow_odd: bool = False
    """Odd orders can make a normaliser zero or negative; they need this opt-in."""
    chunk_size: int = 128
    """Positions per chunk of the causal prefix sums."""
    implementation: str = "auto"
    """'auto': order <= 2 (causal or not) runs on the key moments, chunked, with a hand-written
    backward and no (n, features) tensor (`taylor_fast`); higher orders as 'features': the
    symmetric feature map materialised, plain linear attention (the reference)."""

    def __post_init__(self) -> None:
        _check_choice(self.name, "implementation", self.implementation, ("auto", "features"))
        _check_bool(self.name, "allow_odd", self.allow_odd)
        _check_int(self.name, "order", self.order, 1, self.MAX_ORDER)
        _check_int(self.name, "feature_dim", self.feature_dim, 0, 1024)
        _check_int(self.name, "chunk_size", self.chunk_size, 1, 1 << 16)
        if self.order % 2 == 1 and not self.allow_odd:
            raise SpecError(
                f"{self.name}.order",
                f"odd order {self.order} can make attention normalisers zero or negative; use an "
                f"even order (2 or 4) or set allow_odd: true",
            )


AttentionSpec = Union[SoftmaxSpec, LinformerSpec, NystromSpec, HadamardSpec, HeatSpec, TaylorSpec]


def spec_from_dict(raw: Mapping[str, Any]) -> AttentionSpec:
    """Build a spec from a plain mapping such as `{"name": "heat", "rank": 8}`.

    Unknown variants and unknown keys raise `SpecError` listing what is allowed.
    """
    from heat.attention.registry import REGISTRY

    if not isinstance(raw, Mapping):
        raise SpecError("attention", f"must be a mapping with a 'name' key, got {raw!r}")
    name = raw.get("name")
    if name not in REGISTRY:
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


def exact_counterpart(spec: AttentionSpec) -> AttentionSpec:
    """The exact attention a variant approximates: `heat` -> `hadamard` with the same bound,
    `taylor`, `linformer`, `nystrom` -> `softmax`; exact variants are their own counterpart."""
    if isinstance(spec, HeatSpec):
        return HadamardSpec(bound=spec.bound)
    if isinstance(spec, (TaylorSpec, LinformerSpec, NystromSpec)):
        return SoftmaxSpec()
    return spec

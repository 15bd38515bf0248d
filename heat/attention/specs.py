"""What every attention spec shares: the `AttentionSpec` base class, `SpecError`, the field checks.

A spec is the whole description of a variant (its name and parameters); `build_attention` turns it
into a kernel. Each variant's spec class lives in the variant's own module, next to its kernel
(`SoftmaxSpec` in `softmax.py`, `HeatSpec` in `heat.py`, ...): a frozen keyword-only dataclass
subclassing `AttentionSpec`. Specs validate themselves in `__post_init__` with the `check_*`
methods, so an impossible value fails when the config loads, with a `SpecError` that names the
parameter, the value and what is allowed.

Besides its fields a spec class says, with defaults that suit most variants:
- `exact_counterpart()`: the exact attention it approximates (itself if exact);
- `contract_examples()`, `demo_examples(length)`: the labelled specs the contract tests and
  `heat-pipeline demo-attention` run;
- `sweeps`, `for_length`, `label()`: what `heat-pipeline bench attention` sweeps and how it names
  a configuration;
- `listing_order`, `demo_order`: where the variant appears when all of them are listed;
- `check_runs_on(device_type, causal)`: refuse, when the config loads, a setting the device
  cannot run (HEAT's `implementation: fused` without fused kernels there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from heat.validation import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_int,
)


class SpecError(ConfigError):
    """A bad attention spec. `field` is the parameter's name (e.g. 'heat.rank')."""


@dataclass(frozen=True)
class Sweep:
    """A spec field `heat-pipeline bench attention` sweeps: `--{variant}-{flag} a,b,c` (the
    variant's name with '_' as '-'); `default` are the values benched when the flag is not given.
    Values are integers >= `low` when the defaults are integers, words otherwise."""

    field: str
    flag: str
    default: tuple[int, ...] | tuple[str, ...]
    low: int = 1
    help: str | None = None


@dataclass(frozen=True, kw_only=True)
class AttentionSpec:
    """Base class of every variant's spec (a frozen keyword-only dataclass)."""

    name: ClassVar[str]
    """The variant's name in configs and in the registry."""
    listing_order: ClassVar[int] = 1000
    """Where the variant appears when all are listed (contract tests, benchmark): lower first,
    ties by name."""
    demo_order: ClassVar[int] = 1000
    """Where its rows appear in `heat-pipeline demo-attention`: lower first, ties by name."""
    sweeps: ClassVar[tuple[Sweep, ...]] = ()
    """The fields the benchmark sweeps, in the order of its loops (outermost first)."""

    def exact_counterpart(self) -> AttentionSpec:
        """The exact attention this spec approximates; an exact variant is its own."""
        return self

    def check_runs_on(self, device_type: str, causal: bool) -> None:
        """Raise a `SpecError` if this spec cannot run on `device_type` ("cpu", "cuda") at a
        causal or non-causal site, as far as this process can tell (a config loads on a driver
        that may have no GPU). Default: every spec runs everywhere it is allowed."""

    @property
    def is_exact(self) -> bool:
        return self.exact_counterpart() == self

    @classmethod
    def for_length(cls, max_length: int, **params: Any) -> Self:
        """The spec with `params` for key sequences of up to `max_length` positions. Variants with
        a fixed maximum length (`Capabilities.fixed_max_length`) override this to fit it."""
        return cls(**params)

    @classmethod
    def contract_examples(cls) -> dict[str, Self]:
        """Small specs for the contract tests (tests/test_attention_contract.py), by test id
        (unique across variants), with sequences of at most 64 positions: every path the
        variant has (chunk sizes that do not divide the tests' lengths, options that change the
        computation). Default: the default spec."""
        return {cls.name: cls()}

    @classmethod
    def demo_examples(cls, length: int) -> dict[str, Self]:
        """The specs `heat-pipeline demo-attention` compares with their exact counterpart at
        n = m = `length`, keyed by the parameters it prints. Default: the default spec for an
        approximation, nothing for an exact variant."""
        spec = cls.for_length(length)
        return {} if spec.is_exact else {spec.changed_fields(): spec}

    def label(self) -> str:
        """A short name for tables and plots: the name and the fields that differ from the
        defaults."""
        changed = self.changed_fields()
        return f"{self.name} {changed}" if changed else self.name

    def changed_fields(self) -> str:
        """'field=value, ...' for the fields that differ from their defaults."""
        changed = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.default is dataclasses.MISSING or value != item.default:
                changed.append(f"{item.name}={value}")
        return ", ".join(changed)

    def describe(self, *fields: str) -> str:
        """'field=value, ...' for the given fields."""
        return ", ".join(f"{field}={getattr(self, field)}" for field in fields)

    # ------------------------------------------------------------ checks for __post_init__

    def error(self, field: str, message: str) -> SpecError:
        """The error for a bad `field` of this spec (raise it)."""
        return SpecError(f"{self.name}.{field}", message)

    def check_int(self, field: str, low: int, high: int | None = None) -> None:
        self._check(check_int, field, low, high)

    def check_float(self, field: str, low: float, high: float) -> None:
        """A finite number in (low, high]."""
        self._check(check_float, field, low, high)

    def check_choice(self, field: str, allowed: tuple[str, ...]) -> None:
        self._check(check_choice, field, allowed)

    def check_bool(self, field: str) -> None:
        self._check(check_bool, field)

    def _check(self, check, field: str, *args: Any) -> None:
        try:
            check(f"{self.name}.{field}", getattr(self, field), *args)
        except ConfigError as error:
            raise SpecError(error.field, error.message) from None


def exact_counterpart(spec: AttentionSpec) -> AttentionSpec:
    """The exact attention a variant approximates (`spec.exact_counterpart()`): `heat` ->
    `hadamard` with the same bound, `taylor`, `linformer`, `nystrom` -> `softmax`; exact variants
    are their own counterpart."""
    return spec.exact_counterpart()

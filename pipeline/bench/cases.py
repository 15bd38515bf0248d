"""The variant configurations a benchmark run measures, drawn from the registry.

Every registered variant can be benched: `--variants` names them (default: all, in listing order,
softmax first). A variant's spec declares the fields worth sweeping (`AttentionSpec.sweeps`); each
becomes a flag `--{variant}-{flag}` (e.g. `--heat-ranks 4,8`), and the variant is benched at every
combination of their values. A variant with no sweeps is benched at its defaults, sized to the
longest n (`AttentionSpec.for_length`).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from heat.attention import LinformerSpec, SoftmaxSpec, TaylorSpec, spec_to_dict
from heat.attention.registry import REGISTRY, ordered_variants
from heat.attention.specs import AttentionSpec, Sweep
from heat.attention.taylor import feature_count
from heat.validation import ConfigError
from pipeline.bench.checks import BenchArgumentError

REFERENCE = SoftmaxSpec.name
"""Speed-ups are against softmax attention through SDPA; it is benched first."""


@dataclass
class Case:
    """One variant configuration: its spec and a label for tables and plots."""

    spec: Any
    label: str
    kernel: Any = field(default=None, repr=False)

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def params(self) -> dict[str, Any]:
        raw = spec_to_dict(self.spec)
        raw.pop("name")
        return raw


def ints(text: str, low: int = 1) -> list[int]:
    """Comma-separated integers >= low (repeats dropped)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < low:
        kind = "positive integers" if low == 1 else f"integers >= {low}"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return list(dict.fromkeys(values))


def words(text: str) -> list[str]:
    """Comma-separated names, at least one."""
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def _sweep_flag(variant: str, sweep: Sweep) -> str:
    return f"--{variant.replace('_', '-')}-{sweep.flag}"


def _sweep_dest(variant: str, sweep: Sweep) -> str:
    return _sweep_flag(variant, sweep)[2:].replace("-", "_")


def _sweep_type(sweep: Sweep):
    if all(isinstance(value, int) for value in sweep.default):
        return lambda text: ints(text, sweep.low)
    return words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--variants and every registered variant's sweep flags."""
    names = [entry.name for entry in ordered_variants()]
    names.sort(key=lambda name: name != REFERENCE)
    parser.add_argument("--variants", type=words, default=names,
                        help=f"which variants, comma-separated (default: {','.join(names)})")
    for entry in ordered_variants():
        for sweep in entry.spec.sweeps:
            parser.add_argument(_sweep_flag(entry.name, sweep), dest=_sweep_dest(entry.name, sweep),
                                type=_sweep_type(sweep), default=list(sweep.default),
                                help=sweep.help)


def build_cases(args: argparse.Namespace) -> list[Case]:
    """The variant configurations the arguments ask for, softmax (SDPA) first."""
    cases: list[Case] = []
    for name in dict.fromkeys(args.variants):
        entry = REGISTRY.get(name)
        if entry is None:
            raise BenchArgumentError("--variants", f"unknown variant {name!r}; expected some of "
                                                   f"{', '.join(REGISTRY)}")
        values = {sweep.field: getattr(args, _sweep_dest(name, sweep), list(sweep.default))
                  for sweep in entry.spec.sweeps}
        try:
            cases += variant_cases(entry.spec, values, max_length=max(args.lengths))
        except ConfigError as error:  # a spec's own check (SpecError): name the flag
            raise spec_error(name, error) from None
    cases.sort(key=lambda case: case.variant != REFERENCE)
    _check_unused_sweeps(args)
    return cases


def _check_unused_sweeps(args: argparse.Namespace) -> None:
    """A sweep flag given for a variant that is not benched is a mistake, not a no-op."""
    for entry in ordered_variants():
        if entry.name in args.variants:
            continue
        for sweep in entry.spec.sweeps:
            if getattr(args, _sweep_dest(entry.name, sweep), list(sweep.default)) != list(
                    sweep.default):
                raise BenchArgumentError(_sweep_flag(entry.name, sweep), (
                    f"sets {entry.name} configurations, but {entry.name} is not among "
                    f"--variants {','.join(args.variants)}; expected {entry.name} added to "
                    f"--variants, or no {_sweep_flag(entry.name, sweep)}"))


def flag_for(variant: str, field: str) -> str:
    """The flag that sets `field` of `variant`'s spec: its sweep flag, `--lengths` for the
    length it is sized to (`AttentionSpec.for_length`), else `--variants`."""
    entry = REGISTRY.get(variant)
    for sweep in entry.spec.sweeps if entry else ():
        if sweep.field == field:
            return _sweep_flag(variant, sweep)
    return "--lengths" if field == "max_length" else "--variants"


def spec_error(variant: str, error: ConfigError) -> BenchArgumentError:
    """A spec's `ConfigError` (field 'variant.field') as the bad argument that caused it."""
    field = error.field.removeprefix(f"{variant}.")
    return BenchArgumentError(flag_for(variant, field), str(error))


MAX_TAYLOR_FEATURES = 4_000_000
"""Building a taylor kernel enumerates its monomial features (~5 us and ~200 bytes each)."""


def check_cases(cases: list[Case], args: argparse.Namespace) -> None:
    """Before building any kernel: each spec runs on `--device` (`check_runs_on`), and no
    kernel alone would take unreasonable time or memory to build."""
    for case in cases:
        try:
            case.spec.check_runs_on(args.device, args.causal)
        except ConfigError as error:
            raise spec_error(case.variant, error) from None
        _check_buildable(case, args.head_dim, args.memory_budget_gb)


def _check_buildable(case: Case, head_dim: int, memory_budget_gb: float) -> None:
    """taylor's table of features, linformer's projections."""
    spec, budget = case.spec, memory_budget_gb * 2**30
    if isinstance(spec, TaylorSpec):
        channels = spec.feature_dim or head_dim
        count = feature_count(channels, spec.order)
        if count > MAX_TAYLOR_FEATURES:
            flag = "--taylor-feature-dims" if spec.feature_dim else "--head-dim"
            raise BenchArgumentError(flag, (
                f"{case.label} over {channels} channels has {count:,} features, more than "
                f"the {MAX_TAYLOR_FEATURES:,} a kernel is built with; expected a lower "
                f"--taylor-orders, or --taylor-feature-dims to project to fewer channels"))
    if isinstance(spec, LinformerSpec):
        size = spec.rank * spec.max_length * 4 * (2 if spec.sharing == "none" else 1)
        if size > budget:
            raise BenchArgumentError("--linformer-ranks", (
                f"{case.label} at n up to {spec.max_length} (--lengths) has "
                f"{size / 2**30:.1f} GiB of projections, more than --memory-budget-gb "
                f"{memory_budget_gb}; expected lower ranks or lengths"))


def variant_cases(spec_cls: type[AttentionSpec], values: dict[str, Sequence[Any]], *,
                  max_length: int) -> list[Case]:
    """One case per combination of the swept values (in the order of `spec_cls.sweeps`, the
    last varying fastest), labelled by `spec.label()`. Cases whose labels coincide get the
    swept values that tell them apart appended; identical specs are benched once."""
    fields = [sweep.field for sweep in spec_cls.sweeps]
    specs = [spec_cls.for_length(max_length, **dict(zip(fields, combination)))
             for combination in itertools.product(*(values[f] for f in fields))]
    specs = list(dict.fromkeys(specs))
    cases = []
    for spec in specs:
        label = spec.label()
        alike = [other for other in specs if other.label() == label]
        differing = [f for f in fields if len({getattr(other, f) for other in alike}) > 1]
        cases.append(Case(spec, " ".join([label, *(str(getattr(spec, f)) for f in differing)])))
    return cases

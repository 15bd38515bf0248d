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

from heat.attention import SoftmaxSpec, spec_to_dict
from heat.attention.registry import REGISTRY, ordered_variants
from heat.attention.specs import AttentionSpec, Sweep

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
    """Comma-separated integers >= low."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < low:
        kind = "positive integers" if low == 1 else f"integers >= {low}"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
    return values


def words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


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
    for name in args.variants:
        entry = REGISTRY.get(name)
        if entry is None:
            raise SystemExit(f"--variants: unknown variant {name!r}")
        values = {sweep.field: getattr(args, _sweep_dest(name, sweep), list(sweep.default))
                  for sweep in entry.spec.sweeps}
        cases += variant_cases(entry.spec, values, max_length=max(args.lengths))
    cases.sort(key=lambda case: case.variant != REFERENCE)
    return cases


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

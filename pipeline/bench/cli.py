"""The command line of `heat-pipeline bench attention` (also `python -m pipeline.bench`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from pipeline.bench import cases
from pipeline.bench.checks import (
    BenchArgumentError,
    check_device,
    check_outputs,
    install_error,
    integer,
    positive_number,
    report,
)
from pipeline.bench.report import format_table, plot
from pipeline.bench.runner import run


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `heat-pipeline bench attention`; a bad one is reported as one
    `heat-pipeline:` line, exit status 2 (`checks.install_error`)."""
    install_error(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lengths", type=cases.ints, default=[256, 512, 1024, 2048, 4096, 8192],
                        help="sequence lengths n = m, comma-separated")
    parser.add_argument("--batch", type=integer(1), default=1)
    parser.add_argument("--heads", type=integer(1), default=8)
    parser.add_argument("--head-dim", type=integer(1), default=64)
    parser.add_argument("--causal", action="store_true", help="causal attention (causal variants)")
    cases.add_arguments(parser)  # --variants and each variant's sweeps (--heat-ranks, ...)
    parser.add_argument("--repeats", type=integer(1), default=5,
                        help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=integer(0), default=1)
    parser.add_argument("--error-max-n", type=integer(0), default=2048,
                        help="relative errors only up to this n (the exact counterparts are "
                        "O(n^2))")
    parser.add_argument("--max-call-seconds", type=positive_number, default=20.0,
                        help="skip a variant at larger n once one call is predicted to take longer")
    parser.add_argument("--memory-budget-gb", type=positive_number, default=8.0,
                        help="skip a variant at n where its predicted memory exceeds this")
    parser.add_argument("--seed", type=integer(0, 2**32 - 1), default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file to write")


def check_arguments(args: argparse.Namespace) -> list[cases.Case]:
    """What argparse cannot check alone, before any work: the device, that `--out` and `--plot`
    can be written, the variant specs' own checks (values, the device); returns the cases to
    bench."""
    check_device(args.device)
    check_outputs(args.out, args.plot)
    benched = cases.build_cases(args)
    cases.check_cases(benched, args)
    return benched


def main(args: argparse.Namespace) -> int:
    """Check every argument, bench, print the table, write `--out` and `--plot`. A bad argument:
    one `heat-pipeline:` line on stderr, exit status 2."""
    try:
        records = run(args, check_arguments(args))
    except BenchArgumentError as error:
        report(str(error))
        return 2
    except KeyboardInterrupt:
        print("heat-pipeline: interrupted", file=sys.stderr)
        return 130
    print(format_table(records))
    for flag, path, write in (("--out", args.out, _write_json), ("--plot", args.plot, plot)):
        if path is None:
            continue
        try:
            write(records, path)
        except OSError as error:  # checked before the run: the path changed since
            report(f"{flag}: cannot write {path}: {error.strerror or error}")
            return 2
        print(f"wrote {path}")
    return 0


def _write_json(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")

"""The command line of `heat-pipeline bench attention` (also `python -m pipeline.bench`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from pipeline.bench import cases
from pipeline.bench.report import format_table, plot
from pipeline.bench.runner import run


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `heat-pipeline bench attention`."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lengths", type=cases.ints, default=[256, 512, 1024, 2048, 4096, 8192],
                        help="sequence lengths n = m, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true", help="causal attention (causal variants)")
    cases.add_arguments(parser)  # --variants and each variant's sweeps (--heat-ranks, ...)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--error-max-n", type=int, default=2048,
                        help="relative errors only up to this n (the exact counterparts are O(n^2))")
    parser.add_argument("--max-call-seconds", type=float, default=20.0,
                        help="skip a variant at larger n once one call is predicted to take longer")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0,
                        help="skip a variant at n where its predicted memory exceeds this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file to write")


def main(args: argparse.Namespace) -> int:
    records = run(args)
    print(format_table(records))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1, default=_json_default) + "\n")
        print(f"\nwrote {args.out}")
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")

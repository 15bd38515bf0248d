"""The `heat-pipeline` command (also `python -m pipeline`)."""

from __future__ import annotations

import argparse
import logging
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heat-pipeline",
        description="Test the HEAT paper's claims: attention variants, training, tracking.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo-attention",
        help="print each attention variant's relative error against its exact counterpart",
    )
    demo.add_argument("--length", type=_positive_int, default=256, help="sequence length n = m")
    demo.add_argument("--batch", type=_positive_int, default=2)
    demo.add_argument("--heads", type=_positive_int, default=4)
    demo.add_argument("--head-dim", type=_positive_int, default=32)
    demo.add_argument("--causal", action="store_true", help="causal attention (causal variants)")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import attention_errors, format_rows

    print(
        f"q, k, v ~ N(0, 1): batch={args.batch} heads={args.heads} n=m={args.length} "
        f"head_dim={args.head_dim} causal={args.causal}, float64\n"
    )
    rows = attention_errors(
        batch=args.batch, heads=args.heads, length=args.length, head_dim=args.head_dim,
        causal=args.causal, seed=args.seed,
    )
    print(format_rows(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "demo-attention":
        return run_demo(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


if __name__ == "__main__":
    sys.exit(main())

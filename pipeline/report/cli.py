"""`heat-pipeline report`: the paper's tables and claims from the tracked runs.

Only argparse at import time: building the `heat-pipeline` parser must not pay for MLflow,
sacrebleu and matplotlib, which `run` imports when it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `heat-pipeline report`."""
    parser.add_argument(
        "--tracking-uri", default=None,
        help="the MLflow store to read (default: $MLFLOW_TRACKING_URI, else "
             "sqlite:///<cwd>/runs/mlflow.db, the pipeline's default store)")
    parser.add_argument(
        "--experiment", dest="experiments", action="extend", nargs="+", metavar="NAME",
        default=None, help="experiments to read (repeatable; default: every experiment in the "
                           "store but heat-reports, where reports are logged)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.md, the CSVs and plots "
                             "(default: reports/<timestamp>)")
    parser.add_argument("--resamples", type=_positive_int, default=1000,
                        help="bootstrap resamples per claim (default: 1000)")
    parser.add_argument("--seed", type=int, default=12345,
                        help="seed of the bootstrap resampling (default: 12345, sacrebleu's)")


def run(args: argparse.Namespace) -> int:
    """Make the report; the exit code: 0, or 2 with one line on stderr when none can be made."""
    from pipeline.report.build import make_report
    from pipeline.report.collect import ReportError, default_tracking_uri
    from pipeline.tracking import browse_command

    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracking_uri = args.tracking_uri or default_tracking_uri()
    out = args.out if args.out is not None else Path("reports") / stamp
    try:
        result = make_report(tracking_uri, args.experiments, out, resamples=args.resamples,
                             seed=args.seed, run_name=f"report-{stamp}")
    except ReportError as error:
        print(f"heat-pipeline report: {error}", file=sys.stderr)
        return 2
    counts = result.collection.skip_counts()
    print(f"report of {len(result.collection.runs)} runs "
          f"({sum(counts.values())} skipped) from {tracking_uri}")
    print(f"wrote {len(result.files)} files to {result.out}: {result.out / 'report.md'}")
    print(f"MLflow: experiment 'heat-reports', run report-{stamp} ({result.run_id}); "
          f"browse: {browse_command(tracking_uri)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.report`: the same command without the `heat-pipeline` parser."""
    parser = argparse.ArgumentParser(prog="heat-pipeline report",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The `heat-pipeline` command (also `python -m pipeline`).

Subcommands import what they need when they run: `demo-attention` must not pay for importing Ray,
DeepSpeed and MLflow (seconds), and `--help` must work even where they are broken.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


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

    run = commands.add_parser(
        "run", help="run a pipeline config: prepare, tokenize, train and evaluate every variant"
    )
    run.add_argument("config", help="a pipeline YAML, e.g. configs/iwslt15_en_vi.yaml")
    _add_pipeline_arguments(run)
    smoke = commands.add_parser(
        "smoke",
        help="the CPU smoke pipeline (configs/smoke.yaml: both tasks, all six variants, minutes)",
    )
    _add_pipeline_arguments(smoke)

    evaluate = commands.add_parser(
        "evaluate",
        help="re-score a finished run's trained models (another split, beam size, ...) into "
        "its MLflow child runs, without training again",
    )
    _add_evaluate_arguments(evaluate)

    from pipeline.diagnostics_cli import add_arguments as add_diagnose_arguments  # argparse only

    add_diagnose_arguments(commands.add_parser("diagnose", help="each attention site's error "
                                               "against its exact counterpart, in a trained run"))
    _add_search_commands(commands)
    _add_bench_command(commands)
    check = commands.add_parser(
        "check", help="validate a config and its data sources and print the plan, starting "
        "nothing (no Ray, no run folder, no MLflow run)",
    )
    from pipeline.check import add_arguments as add_check_arguments  # argparse only

    add_check_arguments(check)
    return parser


def _add_search_commands(commands: argparse._SubParsersAction) -> None:
    tune = commands.add_parser(
        "tune", help="run a search config on Ray Tune: each trial trains and evaluates one "
        "(task, variant, parameters), tracked as a child run of the search's parent run",
    )
    tune.add_argument("config", help="a search YAML, e.g. configs/tune_smoke.yaml")
    _add_pipeline_arguments(tune)

    report = commands.add_parser(
        "report", help="the paper's tables, claims with confidence intervals, and plots, from "
        "the tracked runs (Markdown, CSV, PNG, and an MLflow report run)",
    )
    from pipeline.report.cli import add_arguments as add_report_arguments

    add_report_arguments(report)


def _add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks (JSON and a plot)")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    attention = benches.add_parser(
        "attention",
        help="time, peak memory and error of every attention variant against sequence length",
    )
    from pipeline.bench import configure  # torch and heat only: no Ray, DeepSpeed or MLflow

    configure(attention)
    train = benches.add_parser(
        "train", help="one variant's training steps in a plain PyTorch loop, through the "
        "pipeline's Ray Train + DeepSpeed worker, and as torch.nn.Transformer: losses and speed")
    from pipeline.bench.trainbench import configure as configure_train

    configure_train(train)


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides, values parsed as YAML: defaults.train.max_steps=200 "
        "variants.heat.rank=16 tasks.classification=null",
    )
    parser.add_argument(
        "--run-name", help="name of this run (default: <config name>-<date>-<time>); with "
        "--resume, the run to continue (default: the latest run of this config)",
    )
    _add_verbose(parser)
    parser.add_argument(
        "--resume", action="store_true",
        help="continue a killed run: finished stages and variants are skipped, training resumes "
        "from its last checkpoint, MLflow runs are reused",
    )


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show Ray's, Ray Train's, DeepSpeed's and MLflow's own output too (always kept "
        "in the run folder's pipeline.log)",
    )


# flag -> (eval field, the task kinds it applies to)
_EVAL_FLAGS = {
    "split": ("split", ("translation", "classification")),
    "max_examples": ("max_examples", ("translation", "classification")),
    "batch_size": ("batch_size", ("translation", "classification")),
    "beam_size": ("beam_size", ("translation",)),
    "length_penalty": ("length_penalty", ("translation",)),
}


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run name (its folder is <storage root>/pipeline-runs/"
                                    "RUN) or the path of that folder")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides of the run's eval sections: tasks.translation.eval.beam_size=5",
    )
    parser.add_argument("--storage-root", default="runs",
                        help="the run's storage.root (default: runs, as the smoke config)")
    parser.add_argument("--split", choices=("test", "validation"))
    parser.add_argument("--max-examples", type=int, help="score the first N rows (0: all)")
    parser.add_argument("--batch-size", type=_positive_int)
    parser.add_argument("--beam-size", type=_positive_int, help="translation tasks")
    parser.add_argument("--length-penalty", type=float, help="translation tasks")
    _add_verbose(parser)


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


def report_errors(body: Callable[[], int], interrupted: str = "continue with --resume") -> int:
    """Run a command's body; a mistake in the user's config or data (a `ConfigError`, also one
    raised in a Ray task) is one line and exit code 2, Ctrl-C or SIGTERM exit code 130, any other
    failure one line naming its root cause and where its traceback is kept, exit code 1."""
    from pipeline.errors import one_line, user_error

    try:
        return body()
    except KeyboardInterrupt:
        print(f"heat-pipeline: interrupted{'; ' if interrupted else ''}{interrupted}",
              file=sys.stderr)
        return 130
    except Exception as error:
        mistake = user_error(error)
        if mistake is not None:
            print(f"heat-pipeline: config error: {mistake}", file=sys.stderr)
            return 2
        log = getattr(error, "heat_log", None)
        if log is None:
            raise
        print(f"heat-pipeline: failed: {one_line(error)} (traceback in {log})", file=sys.stderr)
        return 1


def run_pipeline_command(args: argparse.Namespace) -> int:
    """Validate the config (exit 2 on any config error, no traceback), run it (the resolved
    config goes to the run folder, and its path is printed)."""

    def body() -> int:
        from pipeline.config import load_config, packaged_config

        path = packaged_config("smoke") if args.command == "smoke" else args.config
        config = load_config(path, args.overrides)
        from pipeline.run import run_pipeline
        from pipeline.summary import format_summary

        result = run_pipeline(config, run_name=args.run_name, resume=args.resume)
        print(format_summary(result))
        return 0

    return report_errors(body)


def run_tune_command(args: argparse.Namespace) -> int:
    """Validate the search config (exit 2 on any config error, before any work), run it."""

    def body() -> int:
        from pipeline.config.tune import load_tune_config

        config = load_tune_config(args.config, args.overrides)
        from pipeline.search.runner import format_search_summary, run_searches

        result = run_searches(config, run_name=args.run_name, resume=args.resume)
        print(format_search_summary(result))
        return 0

    return report_errors(body)


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Re-score a finished run: its recorded config with other eval settings."""
    return report_errors(lambda: _evaluate(args), interrupted="")


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.config import build_config
    from pipeline.configtools import apply_overrides
    from pipeline.run import rescore_run
    from pipeline.runfolder import recorded_run
    from pipeline.summary import format_summary

    run_name, raw = recorded_run(args.run, args.storage_root)
    recorded = build_config(raw)
    overrides = list(args.overrides)
    for flag, (key, kinds) in _EVAL_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides += [f"tasks.{name}.eval.{key}={value}"
                          for name, task in recorded.tasks.items() if task.kind in kinds]
    config = build_config(apply_overrides(raw, overrides))
    result = rescore_run(config, run_name, recorded)
    print(format_summary(result))
    return 0


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line. `KEY=VALUE` overrides may come anywhere after the command, also
    after `--resume` or `--run-name NAME` (argparse alone only takes them right after the
    config: its positionals are consumed together)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from pipeline.console import configure

    configure(verbose=getattr(args, "verbose", False))
    if args.command == "demo-attention":
        return run_demo(args)
    if args.command in ("run", "smoke"):
        return run_pipeline_command(args)
    if args.command == "evaluate":
        return run_evaluate_command(args)
    if args.command == "diagnose":
        from pipeline.diagnostics_cli import run as run_diagnose

        return report_errors(lambda: run_diagnose(args), interrupted="")
    if args.command == "tune":
        return run_tune_command(args)
    if args.command == "report":
        from pipeline.report.cli import run as run_report

        return run_report(args)
    if args.command == "bench" and args.bench == "train":
        from pipeline.bench.trainbench import main as run_train_bench

        return report_errors(lambda: run_train_bench(args), interrupted="")
    if args.command == "bench":
        from pipeline.bench import main as run_bench

        return run_bench(args)
    if args.command == "check":
        from pipeline.check import run as run_check

        return report_errors(lambda: run_check(args), interrupted="")
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


if __name__ == "__main__":
    sys.exit(main())

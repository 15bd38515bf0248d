"""`heat-pipeline bench train CONFIG`: the pipeline's training against a plain PyTorch loop.

One task's first variant (or `--variant`) trains `--steps` optimizer steps three ways, one after
another on the same machine, from the same tokenized splits (the pipeline's own prepare and
tokenize stages, cached), the same seed and the same batches in the same order:

    plain      the project's model in a plain single-process loop (`pipeline.bench.trainloop`)
    pipeline   the same through Ray Train + DeepSpeed: the pipeline's own worker code
               (`VariantRun.timed_steps`), the job's workers, precision and ZeRO stage
    reference  `torch.nn.Transformer` of the same sizes in the plain loop (translation only)
    plain_in_ray  (`--plain-in-ray`) the plain loop inside a Ray Train worker: Ray's process
               environment without the pipeline's code or DeepSpeed
    plain_interleaved, pipeline_interleaved  (`--interleaved`) the plain loop and the
               pipeline's worker code stepped in turn in one Ray Train worker
               (`pipeline.bench.inray`); the second is compared with the first

Per loop: the loss of every step, tokens/s (real source + target tokens over the steps' wall
time), and the steps' time split into data, forward, backward, optimizer and the rest
(`framework`: host syncs, bookkeeping). Only the steps are timed: not start-up, validation,
logging or checkpoints. Output: a table, `--out` JSON and `--plot` PNG. Nothing goes to MLflow.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from heat.validation import ConfigError
from pipeline.bench.checks import install_error, integer
from pipeline.bench.inray import PLAIN as INTERLEAVED_PLAIN
from pipeline.bench.inray import interleaved_loops, pipeline_loop, plain_in_ray_loop
from pipeline.bench.trainloop import LoopRecord, plain_loop
from pipeline.training.phases import PARTS

REPORTED_STEPS = (100, 400)


def configure(parser: argparse.ArgumentParser) -> None:
    install_error(parser, "heat-pipeline: bench train")
    parser.add_argument("config", help="pipeline config (YAML) or a packaged one's name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, as for `heat-pipeline run`")
    parser.add_argument("--task", help="the task to train (default: the config's first)")
    parser.add_argument("--variant", help="the variant to train (default: the task's first)")
    parser.add_argument("--steps", type=integer(1), default=100, help="optimizer steps per loop")
    parser.add_argument("--repeats", type=integer(1), default=1,
                        help="run the loops in turn this many times (speed: the median)")
    parser.add_argument("--warmup", type=integer(0), default=20,
                        help="first steps left out of the speed figures (start-up)")
    parser.add_argument("--seeds", type=integer(1), default=1,
                        help="train this many seeds (train.seed, +1, ...): each seed's repeats "
                             "in turn")
    parser.add_argument("--evaluate", action="store_true",
                        help="quality too: validation loss every train.val_every steps and test "
                             "scores (the evaluate stage's) of the plain and reference loops, "
                             "mean and 95%% interval over the seeds")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the torch.nn.Transformer reference loop")
    parser.add_argument("--no-pipeline", action="store_true",
                        help="skip the Ray Train + DeepSpeed loop (quality runs: its losses are "
                             "the plain loop's with one worker, ZeRO 0, fp32)")
    parser.add_argument("--plain-in-ray", action="store_true",
                        help="also run the plain loop inside a Ray Train worker (one worker): "
                             "separates what Ray's processes cost from the pipeline's code")
    parser.add_argument("--interleaved", action="store_true",
                        help="also step the plain loop and the pipeline's worker in turn in one "
                             "Ray Train worker: their ratio without the machine's drift")
    parser.add_argument("--out", type=Path, help="write the records as JSON here")
    parser.add_argument("--plot", type=Path, help="write loss curves and step times here (PNG)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's, Ray Train's and DeepSpeed's own output too")


def main(args: argparse.Namespace) -> int:
    """Run the bench of `args`; a ConfigError (a bad config, `--task`) reaches the caller,
    which reports it as one line (`pipeline.cli`)."""
    from pipeline import console
    from pipeline.config import load_config, packaged_config

    console.configure(verbose=args.verbose)
    path = args.config
    if not Path(path).exists() and "/" not in path and not path.endswith(".yaml"):
        path = packaged_config(path)  # `smoke`: configs/smoke.yaml
    config = load_config(path, args.overrides)
    task = _pick(config.tasks, args.task, "--task")
    variant = _pick({v.name: v for v in task.variants}, args.variant, "--variant")
    if args.warmup >= args.steps:
        raise ConfigError("--warmup", f"must be below --steps={args.steps}, got {args.warmup}")
    for output in (args.out, args.plot):
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
    result = bench_training(config, task.name, variant.name, args.steps,
                            reference=not args.no_reference, repeats=args.repeats,
                            warmup=args.warmup, seeds=args.seeds, evaluate=args.evaluate,
                            pipeline=not args.no_pipeline, plain_in_ray=args.plain_in_ray,
                            interleaved=args.interleaved)
    print(format_table(result))
    if result["quality"]:
        print(format_quality(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.plot is not None:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _pick(choices: dict[str, Any], name: str | None, flag: str) -> Any:
    if name is None:
        return next(iter(choices.values()))
    if name not in choices:
        raise ConfigError(flag, f"must be one of {sorted(choices)}, got {name!r}")
    return choices[name]


def bench_training(config: Any, task_name: str, variant_name: str, steps: int, *,
                   reference: bool = True, repeats: int = 1, warmup: int = 20,
                   seeds: int = 1, evaluate: bool = False, pipeline: bool = True,
                   plain_in_ray: bool = False, interleaved: bool = False) -> dict[str, Any]:
    """The loops' records and their comparison (what `--out` holds). With `repeats` > 1 the
    loops run in turn that many times, the order rotating (plain, pipeline, reference; pipeline,
    reference, plain; ...), so that load drifting on a shared machine hits them alike; with
    `seeds` > 1 so does each seed from `train.seed` on. `evaluate`: the plain and reference loops' first repeat of each seed also
    record validation losses and test scores (the pipeline's losses are the plain loop's, bit
    for bit, which `max_abs_loss_gap_vs_plain` shows)."""
    import dataclasses

    import torch

    from pipeline import storage
    from pipeline.bench.measurement import rotated
    from pipeline.run import ray_session, run_shared_stages
    from pipeline.stages import StageContext
    from pipeline.training.job import TrainJob
    from pipeline.training.rank import Worker
    from pipeline.training.rankdata import load_data

    task = config.tasks[task_name]
    task = dataclasses.replace(task, variants=[v for v in task.variants if v.name == variant_name])
    runs: dict[str, list[LoopRecord]] = {}
    with ray_session(config.ray) as cpus, tempfile.TemporaryDirectory(prefix="heat-bench-") as tmp:
        context = StageContext(config, task, "bench", None, cpus)  # type: ignore[arg-type]
        run_shared_stages(context, [])
        tokenized = context.outcomes["tokenize"].uri
        job = TrainJob.for_task(
            task, data_uri=tokenized, train_uri=f"{tmp}/bench", tracking_uri="", tracked=False,
            tokenizer_model=storage.read_bytes(storage.join(tokenized, "spm.model")))
        data = load_data(job, Worker(0, 1, torch.device("cpu")))
        first_seed = task.train.seed
        in_ray = [loop for loop, wanted in ((pipeline_loop, pipeline), (plain_in_ray_loop,
                  plain_in_ray), (interleaved_loops, interleaved)) if wanted]
        for turn, (seed, repeat) in enumerate(itertools.product(
                range(first_seed, first_seed + seeds), range(repeats))):
            job = dataclasses.replace(job, run_name=f"bench-{seed}-{repeat}",
                                      train=dataclasses.replace(job.train, seed=seed))
            scored = {"val_every": task.train.val_every, "evaluate": True} if (
                evaluate and repeat == 0) else {}
            loops = [lambda: [plain_loop(job, data, steps, **scored)],
                     *(functools.partial(loop, job, steps) for loop in in_ray)]
            if reference and task.kind == "translation":
                loops.append(lambda: [plain_loop(job, data, steps, reference=True, **scored)])
            for loop in rotated(loops, turn):  # no loop always first (or after the same one)
                for record in loop():
                    record.seed = seed
                    runs.setdefault(record.name, []).append(record)
    return {"config": config.name, "task": task_name, "variant": variant_name, "steps": steps,
            "repeats": repeats, "warmup_steps": warmup,
            "train": dataclasses.asdict(task.train), "model": dataclasses.asdict(task.model),
            "torch_threads": task.train.torch_threads, "cpu_count": os.cpu_count(),
            "loops": [records[0].to_dict() for records in runs.values()],
            "tokens_per_s_runs": {name: [r.tokens_per_s(warmup) for r in records]
                                  for name, records in runs.items()},
            "seeds": seeds, "summary": summarise(runs, warmup),
            "quality": quality(runs) if evaluate else None}


def summarise(runs: dict[str, list[LoopRecord]], warmup: int) -> dict[str, Any]:
    """Per loop: loss at the reported steps, tokens/s after `warmup` steps (the median over
    repeats) and its ratio to the plain loop's (the median of each repeat's ratio, and their
    range), the median step, ms per step of each part; for the pipeline and the reference the
    largest loss gap to the plain loop; whether every repeat gave the same losses. And the
    paired speed: every loop steps the same batches in the same order, so step i of a loop and
    step i of the plain loop in the same repeat did the same work; the median over steps of
    (plain seconds / this loop's seconds) is a speed ratio that a burst of load on the machine
    during a few steps does not move (the median over repeats, and their range). The
    interleaved loops are compared with `plain_interleaved`, the rest with `plain`."""
    summary: dict[str, Any] = {}
    for name, records in runs.items():
        plain = runs[INTERLEAVED_PLAIN if name.endswith("_interleaved") else "plain"]
        first = records[0]
        ratios = [r.tokens_per_s(warmup) / p.tokens_per_s(warmup) for r, p in zip(records, plain)]
        paired = [statistics.median(a / b for a, b in zip(p.seconds[warmup:], r.seconds[warmup:]))
                  for r, p in zip(records, plain)]
        entry = {
            "loss_at": {str(s): first.losses[s - 1] for s in REPORTED_STEPS
                        if s <= len(first.losses)},
            "final_loss": first.losses[-1],
            "tokens_per_s": statistics.median(r.tokens_per_s(warmup) for r in records),
            "tokens_per_s_vs_plain": statistics.median(ratios),
            "tokens_per_s_vs_plain_range": [min(ratios), max(ratios)],
            "paired_speed_vs_plain": statistics.median(paired),
            "paired_speed_vs_plain_range": [min(paired), max(paired)],
            "median_step_ms": statistics.median(
                1000 * s for r in records for s in r.seconds[warmup:] or r.seconds),
            "ms_per_step": {k: statistics.median(1000 * r.split[k] / len(r.seconds)
                                                 for r in records) for k in first.split},
            "same_losses_every_repeat": all(
                r.losses == next(f for f in records if f.seed == r.seed).losses
                for r in records),
        }
        if name != "plain":
            entry["max_abs_loss_gap_vs_plain"] = max(  # the same seed's
                abs(a - b) for r, p in zip(records, plain) for a, b in zip(r.losses, p.losses))
        summary[name] = entry
    return summary


def quality(runs: dict[str, list[LoopRecord]]) -> dict[str, Any]:
    """The scored loops' validation losses and test scores: per seed, and their mean with a
    Student's t 95% interval over the seeds; against the plain loop (the project's model), the
    same of the per-seed differences (the reference: the project's model minus
    `nn.Transformer`; validation loss relative, test scores in points)."""
    from pipeline.report.stats import seed_estimate

    scored = {name: [r for r in records if r.scores] for name, records in runs.items()}
    scored = {name: records for name, records in scored.items() if records}

    def figures(record: LoopRecord) -> dict[str, float]:
        return {**{f"val_loss@{step}": v for step, v in record.val_losses.items()},
                **record.scores}

    def estimate(values: list[float]) -> dict[str, Any]:
        e = seed_estimate(values)
        return {"mean": e.mean, "low": e.low, "high": e.high, "n": e.n, "values": values}

    out: dict[str, Any] = {}
    for name, records in scored.items():
        per_seed = [figures(r) for r in records]
        out[name] = {"seeds": [r.seed for r in records],
                     **{k: estimate([f[k] for f in per_seed]) for k in per_seed[0]}}
    if "plain" in scored and "reference" in scored:
        pairs = [(figures(p), figures(r)) for p, r in zip(scored["plain"], scored["reference"])]
        out["plain_minus_reference"] = {
            k: estimate([(p[k] - r[k]) / r[k] if k.startswith("val_loss") else p[k] - r[k]
                         for p, r in pairs]) for k in pairs[0][0]}
    return out


def format_quality(result: dict[str, Any]) -> str:
    rows = result["quality"]
    names = list(rows)
    keys = [k for k in rows[names[0]] if k != "seeds"]

    def cell(e: dict[str, Any]) -> str:
        span = "" if e["low"] is None else f" [{e['low']:.3g}, {e['high']:.3g}]"
        return f"{e['mean']:.4g}{span}".rjust(30)

    lines = [f"quality over {result['seeds']} seed(s), mean [95% interval]; plain_minus_reference:"
             " the project's model minus nn.Transformer, validation loss relative",
             f"{'':<14}" + "".join(f"{name:>30}" for name in names)]
    lines += [f"{k:<14}" + "".join(cell(rows[n][k]) for n in names) for k in keys]
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    head = (f"{'loop':<20} {'loss@100':>9} {'final':>7} {'max|dloss|':>10} {'tok/s':>8} "
            f"{'ratio':>6} {'paired':>6} " + " ".join(f"{p[:5]:>6}" for p in PARTS) + "  (ms/step)")
    lines = [f"bench train: {result['config']} / {result['task']} / {result['variant']}, "
             f"{result['steps']} steps x {result['repeats']} (speed after step "
             f"{result['warmup_steps']}, median of the repeats)", head]
    for name, s in result["summary"].items():
        at = s["loss_at"].get("100")
        gap = s.get("max_abs_loss_gap_vs_plain")
        lines.append(
            f"{name:<20} {'' if at is None else f'{at:.4f}':>9} {s['final_loss']:>7.4f} "
            f"{'' if gap is None else f'{gap:.1e}':>10} {s['tokens_per_s']:>8,.0f} "
            f"{s['tokens_per_s_vs_plain']:>5.2f}x {s['paired_speed_vs_plain']:>5.2f}x "
            + " ".join(f"{s['ms_per_step'][p]:>6.1f}" for p in PARTS))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, speed, split) = plt.subplots(1, 3, figsize=(15, 4.2))
    for loop in result["loops"]:
        curves.plot(range(1, len(loop["losses"]) + 1), loop["losses"], label=loop["name"],
                    linewidth=1, linestyle="--" if loop["name"] == "pipeline" else "-")
    curves.set(xlabel="optimizer step", ylabel="training loss", title="loss, same batches")
    curves.legend()
    names = list(result["summary"])
    summary = result["summary"]
    speed.bar(names, [summary[n]["tokens_per_s"] for n in names], color="tab:blue")
    speed.set(ylabel="tokens/s (source + target)", title="throughput")
    bottom = [0.0] * len(names)
    for part in PARTS:
        values = [summary[n]["ms_per_step"][part] for n in names]
        split.bar(names, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    split.set(ylabel="ms per optimizer step", title="where a step's time goes")
    split.legend(fontsize="small")
    fig.suptitle(f"bench train: {result['config']} / {result['task']} / {result['variant']}, "
                 f"{result['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

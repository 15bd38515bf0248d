"""`heat-pipeline diagnose RUN`: the attention diagnostics (`pipeline.diagnostics`) of every
trained variant of a finished run, printed, optionally written as JSON and PNG, and tracked in
the variants' MLflow child runs (`diag/<site>.<layer>/<figure>`).

The run is found as `heat-pipeline evaluate` finds it (`pipeline.runfolder.recorded_run`), each
task's finished stages are looked up keyed as a run keys them (`pipeline.run.stage_inputs`,
`stage_folder`), and the job is the one the evaluate stage scores
(`pipeline.stages.evaluate.evaluation_job`). Everything runs in this process: no Ray.

The train stage's key includes a fingerprint of `heat/` and of the training code, so after an
edit there a finished run's train folder has an older key than the current code computes. Then
the run's finished folder of that stage and task whose recorded inputs equal the current ones
but for the code is used, with a warning: diagnosing trained weights with the current kernels
is what this command is for. (A module of its own: `pipeline.diagnostics` is imported by the
evaluate stage, and this one imports the stages.)
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run name (its folder is <storage root>/pipeline-runs/"
                                    "RUN) or the path of that folder")
    parser.add_argument("--storage-root", default="runs",
                        help="the run's storage.root (default: runs, as the smoke config)")
    parser.add_argument("--batches", type=int, default=4,
                        help="validation batches (token-budget batches, shortest first) per "
                             "variant (default: 4)")
    parser.add_argument("--out", metavar="FILE.json", help="write every row as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot the errors per site")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show MLflow's own output too")


def run(args: argparse.Namespace) -> int:
    """The command's body (inside `pipeline.cli.report_errors`: a ConfigError is one line)."""
    from heat.validation import ConfigError
    from pipeline.config import build_config
    from pipeline.diagnostics import format_diagnostics, plot_diagnostics
    from pipeline.runfolder import recorded_run

    if args.batches < 1:
        raise ConfigError("--batches", f"must be a positive integer, got {args.batches}")
    run_name, raw = recorded_run(args.run, args.storage_root)
    config = build_config(raw)
    jobs = [_finished_job(config, seeded, run_name, seed) for task in config.tasks.values()
            for seed, seeded in config.seeded(task)]
    rows = {(context.label, variant.name): _diagnose(context, job, variant, args.batches)
            for context, job in jobs for variant in job.variants}
    every = [row for part in rows.values() for row in part]
    print(f"run {run_name}: each attention site's error against its exact counterpart on "
          f"{args.batches} validation batches (q, k figures: max over heads)\n")
    print(format_diagnostics(every))
    if args.out:
        Path(args.out).write_text(json.dumps({"run": run_name,
                                              "rows": [row.to_dict() for row in every]},
                                             indent=2) + "\n")
        print(f"\nJSON: {args.out}")
    if args.plot:
        print(f"plot: {plot_diagnostics(every, args.plot)}")
    _track(config, run_name, jobs, rows)
    print(f"MLflow: diag/<site>.<layer>/... in the child runs of run {run_name} "
          f"({config.tracking.uri})")
    return 0


def _diagnose(context: Any, job: Any, variant: Any, batches: int) -> list[Any]:
    from pipeline.diagnostics import diagnose_job

    logger.info("diagnose: %s/%s", context.label, variant.name)
    return [replace(row, task=context.label) for row in diagnose_job(job, variant,
                                                                     batches=batches)]


def _finished_job(config: Any, task: Any, run_name: str, seed: int | None = None
                  ) -> tuple[Any, Any]:
    """(the task's stage context with its finished stages before evaluate, the untracked job
    the evaluate stage scores); a ConfigError when a stage or a variant's weights are missing."""
    from heat.validation import ConfigError
    from pipeline import stagecache, storage
    from pipeline.run import stage_folder, stage_inputs
    from pipeline.stages import STAGES, StageContext
    from pipeline.stages.evaluate import EvaluateStage, evaluation_job

    # A stage's inputs() reads the config and the upstream outcomes, never the tracker or cpus.
    context = StageContext(config, task, run_name, tracker=None, cpus=1,  # type: ignore[arg-type]
                           seed=seed)
    for stage in STAGES[:[s.name for s in STAGES].index(EvaluateStage.name)]:
        inputs = stage_inputs(context, stage)
        out = stage_folder(context, stage, inputs)
        if not stagecache.finished(out):
            older = _finished_with_other_code(out, inputs, stage.per_run)
            if older is None:
                raise ConfigError("run", f"run {run_name!r} has not finished its {stage.name} "
                                         f"stage for task {task.name} (no finished output in "
                                         f"{out})")
            logger.warning("%s: %s: the code changed since run %s; using its output %s",
                           task.name, stage.name, run_name, older)
            out = older
        context.outcomes[stage.name] = stagecache.StageOutcome(
            out, stagecache.read_result(out), skipped=True, wall_s=0.0)
    job = evaluation_job(context, None)
    for variant in job.variants:
        weights = storage.join(job.checkpoint_uri(variant.name), "model.pt")
        if not storage.exists(weights):
            raise ConfigError("run", f"run {run_name!r}: variant {variant.name} of task "
                                     f"{task.name} has no trained weights: {weights} does not "
                                     f"exist")
    return context, job


def _finished_with_other_code(out: str, inputs: dict[str, Any], per_run: bool) -> str | None:
    """A finished sibling of `out` (the same run and task for a stage of the run) whose
    recorded inputs are `inputs` but for the code's fingerprint and for fields the older code
    did not have (a spec's new parameter, at its default); the latest finished."""
    import pyarrow.fs as pafs

    from pipeline import stagecache, storage

    parent, _, name = out.rpartition("/")
    prefix = name.rpartition("-")[0] + "-" if per_run else ""
    wanted = _without_code(json.loads(json.dumps(inputs, sort_keys=True)))
    fs, path = storage.filesystem(parent)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        uri = storage.join(parent, info.base_name)
        if (info.type != pafs.FileType.Directory or not info.base_name.startswith(prefix)
                or not stagecache.finished(uri)
                or not storage.exists(storage.join(uri, stagecache.INPUTS))):
            continue
        if _covers(wanted, _without_code(storage.read_json(storage.join(uri, stagecache.INPUTS)))):
            marker = storage.read_json(storage.join(uri, stagecache.MARKER))
            found.append((str(marker.get("finished_at", "")), uri))
    return max(found)[1] if found else None


def _without_code(inputs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in inputs.items() if key != "code"}


def _covers(current: Any, recorded: Any) -> bool:
    """`recorded` equals `current`, where mappings of `current` may hold more keys."""
    if isinstance(current, dict) and isinstance(recorded, dict):
        return recorded.keys() <= current.keys() and all(
            _covers(current[key], value) for key, value in recorded.items())
    if isinstance(current, list) and isinstance(recorded, list):
        return len(current) == len(recorded) and all(map(_covers, current, recorded))
    return current == recorded


def _track(config: Any, run_name: str, jobs: list[tuple[Any, Any]],
           rows: dict[tuple[str, str], list[Any]]) -> None:
    """The rows into each variant's child run, at its last training step; the runs reopened
    for it are finished again."""
    from pipeline.diagnostics import log_diagnostics
    from pipeline.run import open_tracker
    from pipeline.tracking import task_tags

    tracker = open_tracker(config, run_name, resume=True)
    try:
        for context, job in jobs:
            task = context.task
            children = tracker.child_runs(task.name, [v.name for v in task.variants],
                                          seed=context.seed,
                                          tags=task_tags(task.kind, task.data.dataset))
            tracked = replace(job, mlflow_run_ids={n: c.run_id for n, c in children.items()},
                              tracked=True)
            try:
                for variant in task.variants:
                    steps = context.outcomes["train"].result[variant.name]["steps"]
                    log_diagnostics(tracked, variant, rows[(context.label, variant.name)],
                                    step=steps)
            finally:
                for child in children.values():
                    tracker.finish(child.run_id)
    finally:
        tracker.finish(tracker.parent_run_id)

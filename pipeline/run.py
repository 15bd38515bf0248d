"""Orchestration: every task through its stages (prepare -> tokenize -> train -> evaluate),
cached and tracked.

Storage layout under `storage.root`:

    prepare/<key>/            cleaned Parquet splits + stats.json      (pipeline.stages.prepare)
    tokenize/<key>/           spm.model + token-id Parquet splits      (pipeline.stages.tokenize)
    train/<run>/<task>-<key>/ Ray Train run: checkpoints, results/<variant>/best_checkpoint
                                                                        (pipeline.stages.train)
    evaluate/<run>/<task>-<key>/<variant>/hypotheses.txt               (pipeline.stages.evaluate)
    pipeline-runs/<run>/      config.yaml (resolved) and summary.txt of one invocation
    pipeline-runs/<config>.latest   the name of the config's latest run (for --resume)
    mlflow.db, mlartifacts/   the default MLflow store

Keys hash everything a stage's output depends on: its declared inputs (the upstream outputs, its
config sections, the input files' sizes and dates) and a fingerprint of its code (`Stage.code`).
prepare and tokenize are pure functions of those, so any later run (any run name) reuses them.
train and evaluate are an experiment's: their keys include the run name, so a new run trains
again and `--resume` (same run name) continues the killed fit from its last checkpoint, skipping
finished tasks and variants. `rescore_run` evaluates a finished run again with other eval
settings: every stage before evaluate must be finished, and nothing else changes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from heat.validation import ConfigError
from pipeline import console, seeds, stagecache, storage
from pipeline.config import (
    TASK_SECTIONS,
    PipelineConfig,
    RayConfig,
    TaskConfig,
)
from pipeline.errors import console_without_tracebacks, user_error
from pipeline.runfolder import (
    RunnableConfig,
    differences,
    record_run,
    resolve_run_name,
    run_path,
    sigterm_as_interrupt,
    traceback_kept,
)
from pipeline.services import probe_services
from pipeline.shared_storage import check_shared
from pipeline.stages import STAGES, Stage, StageContext
from pipeline.summary import format_summary
from pipeline.tracking import PipelineTracker, flatten

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent

STAGE_CODE = {stage.name: stage.code for stage in STAGES}
"""The code each stage's output depends on: an edit there invalidates the cached outputs."""
_TASK_KEYS = tuple(f"{section}." for section in TASK_SECTIONS)


@dataclass(frozen=True)
class StageReport:
    task: str
    stage: str
    uri: str
    skipped: bool
    wall_s: float
    seed: int | None = None
    """The repetition of a stage of the run, in a run with `seeds`."""

    @property
    def label(self) -> str:
        """`translation/train`, or `translation/train@1` for seed 1's."""
        return f"{self.task}/{self.stage}" + ("" if self.seed is None else f"@{self.seed}")


@dataclass
class RunResult:
    """What every invocation (a pipeline run, a search) reports: where its runs are tracked and
    stored, every stage's outcome, its wall time."""

    name: str
    run_name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    storage_root: str
    experiment_id: str = ""
    stages: list[StageReport] = field(default_factory=list)
    wall_s: float = 0.0

    @classmethod
    def started(cls, config: RunnableConfig, run_name: str, tracker: PipelineTracker,
                **fields: Any) -> Self:
        """The result of a run of `config` just opened in `tracker`, with `fields` set."""
        return cls(config.name, run_name, config.tracking.uri, config.tracking.experiment,
                   tracker.parent_run_id, config.storage.root, tracker.experiment_id, **fields)


@dataclass
class PipelineResult(RunResult):
    """What one invocation did: per task and variant the scores, and every stage's outcome."""

    tasks: dict[str, str] = field(default_factory=dict)
    """Task name -> kind (translation / classification)."""
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Task -> variant -> its train and evaluate results (scores, tokens/s, wall time, ...)."""
    evaluations: dict[str, str] = field(default_factory=dict)
    """Task -> the label of a re-scoring (`rescore_run`) whose scores the table shows."""


def run_pipeline(config: PipelineConfig, *, run_name: str | None = None,
                 resume: bool = False) -> PipelineResult:
    """Run every task of `config`; ConfigError before any work for a bad run name or resume.

    A failure (or Ctrl-C, or SIGTERM from `ray job stop`) marks the MLflow parent run and its
    unfinished children FAILED with the reason, and re-raises; finished stage outputs stay, so
    `--resume` continues from them."""
    probe_services(config)
    run_name = resolve_run_name(config, run_name, resume)
    record_run(config, run_name)
    with console.log_file(run_path(config, run_name)) as log:
        logger.info("run %s: resolved config %s, log %s", run_name,
                    run_path(config, run_name, "config.yaml"), log)
        tracker = open_tracker(config, run_name, resume=resume)
        with traceback_kept(config, run_name), sigterm_as_interrupt(), \
                tracker.failed_on_error():
            _log_parent(tracker, config, run_name)
            return _execute(config, run_name, tracker, summary_file="summary.txt")


def rescore_run(config: PipelineConfig, run_name: str, recorded: PipelineConfig
                ) -> PipelineResult:
    """Evaluate the finished run `run_name` (recorded with `recorded`) again with the eval
    settings of `config`, which may differ from the recorded one in its tasks' eval sections
    only. The scores go into the run's MLflow child runs under a label naming the change."""
    changed = [key for key in differences(recorded.to_dict(), config.to_dict())
               if not re.fullmatch(r"tasks\.[^.]+\.eval(\..+)?", key)]
    if changed:
        raise ConfigError(changed[0], f"differs from run {run_name!r}'s config; evaluate "
                                      f"changes only the tasks' eval settings")
    from pipeline.stages.evaluate import evaluation_label

    labels = {name: evaluation_label(recorded.tasks[name].eval, task.eval)
              for name, task in config.tasks.items()}
    probe_services(config)
    suffix = "-".join(sorted({label for label in labels.values() if label})) or "rerun"
    with console.log_file(run_path(config, run_name)), \
            traceback_kept(config, run_name), sigterm_as_interrupt():
        tracker = open_tracker(config, run_name, resume=True)
        with tracker.failed_on_error():
            return _execute(config, run_name, tracker, summary_file=f"summary-{suffix}.txt",
                            labels=labels, finished_before="evaluate")


def open_tracker(config: RunnableConfig, run_name: str, *, resume: bool) -> PipelineTracker:
    console.refresh()  # MLflow's handler (its store migrations' INFO lines)
    return PipelineTracker.open(
        tracking_uri=config.tracking.uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location, run_name=run_name,
        config_name=config.name, resume=resume, description=config.description,
    )


def _execute(config: PipelineConfig, run_name: str, tracker: PipelineTracker, *,
             summary_file: str, labels: dict[str, str] | None = None,
             finished_before: str | None = None) -> PipelineResult:
    """Every task through the stages, then the summary (stored, tracked, returned)."""
    start = time.perf_counter()
    result = PipelineResult.started(config, run_name, tracker,
                            evaluations={t: label for t, label in (labels or {}).items() if label})
    _build_cpu_kernels(config)
    # ray.init installs its own SIGTERM handler (exit at once): take the signal back.
    with ray_session(config.ray) as cpus, sigterm_as_interrupt():
        check_shared(config.storage.root)
        for task in config.tasks.values():
            result.tasks[task.name] = task.kind
            result.results[task.name] = _run_seeds(config, task, run_name, tracker, cpus,
                                                   (labels or {}).get(task.name, ""),
                                                   result.stages, finished_before)
    result.wall_s = time.perf_counter() - start
    summary = format_summary(result)
    storage.write_bytes(run_path(config, run_name, summary_file), summary.encode())
    tracker.log_text(tracker.parent_run_id, summary, summary_file)
    tracker.log_summary(result.results, {task.name: (labels or {}).get(task.name) or
                                         task.eval.split for task in config.tasks.values()})
    tracker.finish(tracker.parent_run_id)
    return result


def _build_cpu_kernels(config: PipelineConfig) -> None:
    """Build the fused CPU kernels while the data stages run if a task trains, on the CPU, a
    variant that calls them (`cpu_kernels.build_in_background`)."""
    if _variants_calling_cpu_kernels(config):
        from heat.attention import cpu_kernels

        cpu_kernels.build_in_background()


def _variants_calling_cpu_kernels(config: PipelineConfig) -> dict[str, list[str]]:
    """task -> the variants it trains on the CPU whose attention calls the fused CPU kernels."""
    from heat.attention.cpu_kernels import USERS

    called = {task.name: [variant.name for variant in task.variants
                          if variant.attention_names() & USERS]
              for task in config.tasks.values() if not task.train.use_gpu}
    return {task: names for task, names in called.items() if names}


def _log_parent(tracker: PipelineTracker, config: PipelineConfig, run_name: str) -> None:
    resolved = config.to_dict()
    params = {k: v for k, v in resolved.items() if k != "tasks"}
    params["tasks"] = ", ".join(config.tasks)
    tracker.log_params(tracker.parent_run_id, flatten({**params, "run_name": run_name}))
    tracker.log_text(tracker.parent_run_id, yaml.safe_dump(resolved, sort_keys=False),
                     "config.yaml")


@contextmanager
def ray_session(config: RayConfig) -> Iterator[int]:
    """Start (and stop) Ray for the run; yield the CPUs the data stages may use.

    A Ray already initialised by the caller (a test, a notebook, a Tune trial) is used as is and
    left running."""
    import ray
    import ray.data

    console.refresh()  # Ray's own handlers, installed at import: quiet before ray.init talks
    owned = not ray.is_initialized()
    if owned and config.address == "local":
        # address="local": a private instance even when a cluster runs on this machine. With
        # its dashboard: Ray Train's PlacementGroupCleaner asks the dashboard's State API whether
        # a run's controller is still alive, and without it the workers' placement group of a
        # run that ended ungracefully (a Tune trial stopped by ASHA) is never removed: its CPUs
        # stay reserved and every later trial waits for them forever.
        context = ray.init(address="local", num_cpus=config.local_cpus(),
                           include_dashboard=True, dashboard_host="127.0.0.1",
                           _system_config={"worker_niceness": config.worker_niceness},
                           **console.ray_init_options())
    elif owned:
        context = ray.init(address=config.address, **console.ray_init_options())
    if owned:
        _say_where_ray_runs(context)
    # One overall Ray Data bar per dataset; the per-operator bars of datasets read by several
    # processes interleave into unreadable terminal output.
    data = ray.data.DataContext.get_current()
    data.enable_operator_progress_bars = False
    # Stage lines say what runs; Ray Data's own progress only with -v (every dataset's
    # "Total Progress" lines otherwise outnumber the pipeline's).
    data.enable_progress_bars = console.verbose()
    # A UDF's own exception (a ConfigError about a damaged file) reaches the driver as itself,
    # under RayTaskError's `.cause`, not as a UserCodeException holding only its text.
    data.raise_original_map_exception = True
    console_without_tracebacks("ray", "ray.data")
    console.refresh()
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if owned:
            ray.shutdown()


def _say_where_ray_runs(context: Any) -> None:
    """One line: which cluster, its dashboard, and where the workers' own logs are (their
    output is not shown on this console, `pipeline.console`)."""
    import ray

    node = ray._private.worker.global_worker.node  # the only handle on the session's folder
    logs = node.get_logs_dir_path() if node is not None else "the head node's Ray session"
    dashboard = context.address_info.get("webui_url") or context.dashboard_url
    logger.info("Ray %s, %g CPUs%s; workers' logs in %s", context.address_info.get("gcs_address"),
                ray.cluster_resources().get("CPU", 0),
                f", dashboard http://{dashboard}" if dashboard else "", logs)


# ---------------------------------------------------------------------------------------------
# One task


def _run_seeds(config: PipelineConfig, task: TaskConfig, run_name: str,
               tracker: PipelineTracker, cpus: int, eval_label: str, reports: list[StageReport],
               finished_before: str | None) -> dict[str, dict[str, Any]]:
    """The task through its stages once, or with `seeds` its stages of the run once per seed
    (the shared ones, prepare and tokenize, once): per variant its results, or the seeds'
    combined (`pipeline.seeds.combine`)."""
    per_seed = {context.seed: _run_task(context, reports, finished_before)
                for context in seed_contexts(config, task, run_name, tracker, cpus, eval_label)}
    if config.seeds is None:
        return per_seed[None]
    return seeds.combine(per_seed)


def seed_contexts(config: PipelineConfig, task: TaskConfig, run_name: str,
                  tracker: PipelineTracker | None, cpus: int, eval_label: str = ""
                  ) -> Iterator[StageContext]:
    """A context per repetition of the task (`PipelineConfig.seeded`: one without `seeds`),
    each after the first holding the outcomes of the stages every seed shares (prepare,
    tokenize) that the one before it looked up, so that those run once."""
    shared: dict[str, stagecache.StageOutcome] = {}
    for seed, seeded in config.seeded(task):
        context = StageContext(config, seeded, run_name, tracker, cpus,  # type: ignore[arg-type]
                               seed=seed, eval_label=eval_label, outcomes=dict(shared))
        yield context
        shared = {stage.name: context.outcomes[stage.name] for stage in STAGES
                  if not stage.per_run and stage.name in context.outcomes}


def _run_task(context: StageContext, reports: list[StageReport],
              finished_before: str | None) -> dict[str, dict[str, Any]]:
    """Every stage in order (but those already in `context.outcomes`); the per-variant results
    of the stages of the run (train, evaluate), merged, in the config's order of variants."""
    must_be_finished = bool(finished_before)
    for stage in STAGES:
        if stage.name == finished_before:
            must_be_finished = False
        if stage.name not in context.outcomes:
            context.outcomes[stage.name] = _stage(context, stage, reports, must_be_finished)
    per_run = [context.outcomes[stage.name].result for stage in STAGES if stage.per_run]
    return {v.name: {k: value for result in per_run for k, value in result[v.name].items()}
            for v in context.task.variants}


def run_shared_stages(context: StageContext, reports: list[StageReport]) -> None:
    """The stages every run shares (prepare, tokenize: pure functions of their inputs, cached),
    into `context.outcomes`: what a search runs once before its trials."""
    for stage in STAGES:
        if not stage.per_run:
            context.outcomes[stage.name] = _stage(context, stage, reports, False)


def stage_folder(context: StageContext, stage: Stage, inputs: dict[str, Any]) -> str:
    """`<root>/<stage>/<key>`, or for a stage of the run `<root>/<stage>/<run>/<task>-<key>`."""
    root = context.config.storage.root
    if stage.per_run:
        return storage.join(root, stage.name, context.run_name,
                            f"{context.task.name}-{stagecache.content_key(inputs)}")
    return storage.join(root, stage.name, stagecache.content_key(inputs))


def stage_inputs(context: StageContext, stage: Stage) -> dict[str, Any]:
    """Everything the output of `stage` for `context` is keyed by: its declared inputs, its
    code's fingerprint and, for a stage of the run, the run name. Writes nothing (it reads the
    stage's source files and the input files' sizes and dates): `heat-pipeline check` computes
    the keys with it without running a stage."""
    inputs = {**stage.inputs(context), "code": code_version(stage)}
    if stage.per_run:
        inputs["run_name"] = context.run_name
    return inputs


def _stage(context: StageContext, stage: Stage, reports: list[StageReport],
           must_be_finished: bool) -> stagecache.StageOutcome:
    """Run one cached stage with start / finish / skip log lines; a ConfigError it raises about
    one of the task's sections (an empty corpus, a vocabulary too large for it) is reported
    under the task's key."""
    task = context.task
    inputs = stage_inputs(context, stage)
    out = stage_folder(context, stage, inputs)
    label = f"{context.label if stage.per_run else task.name}: {stage.name}"
    if not stagecache.finished(out):
        if must_be_finished:
            raise ConfigError("run", f"run {context.run_name!r} has not finished its "
                                     f"{stage.name} stage for task {task.name}: continue it "
                                     f"with `heat-pipeline run CONFIG --resume --run-name "
                                     f"{context.run_name}` first")
        logger.info("%s: starting -> %s", label, out)
    try:
        with console.task_lines(task.name):
            outcome = stagecache.run_cached(out, inputs, lambda uri: stage.run(context, uri),
                                            clear_partial=not stage.keep_partial)
    except Exception as error:
        mistake = user_error(error)  # also one raised in a Ray task (reading a damaged file)
        if mistake is not None and mistake.field.startswith(_TASK_KEYS):
            raise mistake.within(f"tasks.{task.name}") from None
        raise
    if outcome.skipped:
        logger.info("%s: skipped, finished earlier (%s)", label, out)
    else:
        logger.info("%s: finished in %.1f s", label, outcome.wall_s)
    reports.append(StageReport(task.name, stage.name, out, outcome.skipped, outcome.wall_s,
                               context.seed if stage.per_run else None))
    return outcome


def code_version(stage: Stage) -> str:
    """A fingerprint of the stage's source files (`Stage.code`)."""
    return stagecache.source_fingerprint(
        [path for pattern in stage.code for path in _ROOT.glob(pattern)])

"""Orchestration: every task through prepare -> tokenize -> train+evaluate, cached and tracked.

Storage layout under `storage.root`:

    prepare/<key>/            cleaned Parquet splits + stats.json      (D: pipeline.stages.prepare)
    tokenize/<key>/           spm.model + token-id Parquet splits      (D: pipeline.stages.tokenize)
    train/<run>/<task>-<key>/ Ray Train run: checkpoints, results/<variant>/ (T: stages.train)
    pipeline-runs/<run>/      config.yaml (resolved) and summary.txt of one invocation
    pipeline-runs/<config>.latest   the name of the config's latest run (for --resume)
    mlflow.db, mlartifacts/   the default MLflow store

Keys hash everything a stage's output depends on: the upstream key, the stage's config section,
the input files' sizes and dates, and a fingerprint of the code that computes it. prepare and
tokenize are pure functions of those, so any later run (any run name) reuses them. Training is an
experiment: its key includes the run name, so a new run trains again and `--resume` (same run
name) continues the killed fit from its last checkpoint, skipping finished tasks and variants.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from heat.validation import ConfigError
from pipeline import stagecache
from pipeline.config import PipelineConfig, RayConfig, TaskConfig, in_task
from pipeline.data import storage
from pipeline.tracking import PipelineTracker, browse_command, flatten

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RUNS_FOLDER = "pipeline-runs"

# The code each stage's output depends on: an edit there invalidates the cached outputs.
STAGE_CODE = {
    "prepare": ("pipeline/stages/prepare.py", "pipeline/data/*.py"),
    "tokenize": ("pipeline/stages/tokenize.py", "pipeline/data/encoding.py"),
    "train": ("pipeline/stages/train.py", "pipeline/stages/evaluate.py", "pipeline/batching.py",
              "pipeline/training/*.py", "heat/**/*.py"),
}


@dataclass(frozen=True)
class StageReport:
    task: str
    stage: str
    uri: str
    skipped: bool
    wall_s: float


@dataclass
class PipelineResult:
    """What one invocation did: per task and variant the scores, and every stage's outcome."""

    name: str
    run_name: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    storage_root: str
    tasks: dict[str, str] = field(default_factory=dict)
    """Task name -> kind (translation / classification)."""
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Task -> variant -> train_and_evaluate's result (scores, tokens/s, wall time, ...)."""
    stages: list[StageReport] = field(default_factory=list)
    wall_s: float = 0.0


def run_pipeline(config: PipelineConfig, *, run_name: str | None = None,
                 resume: bool = False) -> PipelineResult:
    """Run every task of `config`; ConfigError before any work for a bad run name or resume.

    A failure (or Ctrl-C, or SIGTERM from `ray job stop`) marks the MLflow parent run and its
    unfinished children FAILED with the reason, and re-raises; finished stage outputs stay, so
    `--resume` continues from them."""
    start = time.perf_counter()
    run_name = _resolve_run_name(config, run_name, resume)
    _record_run(config, run_name)
    tracker = PipelineTracker.open(
        tracking_uri=config.tracking.uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location, run_name=run_name,
        config_name=config.name, resume=resume,
    )
    result = PipelineResult(config.name, run_name, config.tracking.uri,
                            config.tracking.experiment, tracker.parent_run_id,
                            config.storage.root)
    with _sigterm_as_interrupt(), tracker.failed_on_error():
        _log_parent(tracker, config, run_name)
        # ray.init installs its own SIGTERM handler (exit at once): take the signal back.
        with ray_session(config.ray) as cpus, _sigterm_as_interrupt():
            for task in config.tasks.values():
                result.tasks[task.name] = task.kind
                result.results[task.name] = _run_task(task, config, run_name, tracker, cpus,
                                                      result.stages)
        result.wall_s = time.perf_counter() - start
        summary = format_summary(result)
        storage.write_bytes(_run_folder(config, run_name, "summary.txt"), summary.encode())
        tracker.log_text(tracker.parent_run_id, summary, "summary.txt")
        tracker.finish(tracker.parent_run_id)
    return result


# ---------------------------------------------------------------------------------------------
# Run names and --resume


def _run_folder(config: PipelineConfig, *parts: str) -> str:
    return storage.join(config.storage.root, RUNS_FOLDER, *parts)


def _resolve_run_name(config: PipelineConfig, run_name: str | None, resume: bool) -> str:
    """The run to start, or with `resume` the run to continue (default: the config's latest).

    Resuming needs the same resolved config: the stage keys, the checkpoints and the MLflow
    params all assume it."""
    if run_name is not None and not _RUN_NAME.fullmatch(run_name):
        raise ConfigError("--run-name", f"must match {_RUN_NAME.pattern}, got {run_name!r}")
    latest = _run_folder(config, f"{config.name}.latest")
    if not resume:
        run_name = run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if storage.exists(_run_folder(config, run_name)):
            raise ConfigError("--run-name", f"run {run_name!r} already exists under "
                                            f"{config.storage.root}: continue it with --resume, "
                                            f"or choose another name")
        return run_name
    if run_name is None:
        if not storage.exists(latest):
            raise ConfigError("--resume", f"no earlier run of config {config.name!r} under "
                                          f"{config.storage.root}; start one without --resume")
        run_name = storage.read_bytes(latest).decode().strip()
    recorded = _run_folder(config, run_name, "config.yaml")
    if not storage.exists(recorded):
        raise ConfigError("--resume", f"no run {run_name!r} under {config.storage.root} to "
                                      f"resume")
    changed = _differences(yaml.safe_load(storage.read_bytes(recorded)), config.to_dict())
    if changed:
        raise ConfigError("--resume", f"the config differs from run {run_name!r}'s at "
                                      f"{', '.join(changed[:5])}; resume with the same config "
                                      f"and overrides, or start a new run without --resume")
    logger.info("resuming run %s", run_name)
    return run_name


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys
                for d in _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)]
    return [] if old == new else [prefix or "config"]


def _record_run(config: PipelineConfig, run_name: str) -> None:
    """Write the resolved config and the latest-run pointer before any work, so a run killed at
    any point can be resumed."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    storage.write_bytes(_run_folder(config, run_name, "config.yaml"), text.encode())
    storage.write_bytes(_run_folder(config, f"{config.name}.latest"), run_name.encode())


def _log_parent(tracker: PipelineTracker, config: PipelineConfig, run_name: str) -> None:
    resolved = config.to_dict()
    params = {k: v for k, v in resolved.items() if k != "tasks"}
    params["tasks"] = ", ".join(config.tasks)
    tracker.log_params(tracker.parent_run_id, flatten({**params, "run_name": run_name}))
    tracker.log_text(tracker.parent_run_id, yaml.safe_dump(resolved, sort_keys=False),
                     "config.yaml")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (`ray job stop`, a scheduler's kill) into KeyboardInterrupt, so the MLflow
    runs end FAILED with a reason instead of staying RUNNING forever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def ray_session(config: RayConfig) -> Iterator[int]:
    """Start (and stop) Ray for the run; yield the CPUs the data stages may use.

    A Ray already initialised by the caller (a test, a notebook, a Tune trial) is used as is and
    left running."""
    import ray
    import ray.data

    owned = not ray.is_initialized()
    if owned and config.address == "local":
        # address="local": a private instance even when a cluster runs on this machine.
        ray.init(address="local", num_cpus=config.local_cpus(), include_dashboard=False)
    elif owned:
        ray.init(address=config.address)
    # One overall Ray Data bar per dataset; the per-operator bars of datasets read by several
    # processes interleave into unreadable terminal output.
    ray.data.DataContext.get_current().enable_operator_progress_bars = False
    try:
        yield max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if owned:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# One task


def _run_task(task: TaskConfig, config: PipelineConfig, run_name: str, tracker: PipelineTracker,
              cpus: int, reports: list[StageReport]) -> dict[str, dict[str, Any]]:
    """prepare -> tokenize -> train+evaluate of every variant; the per-variant results."""
    prepared = _prepare_stage(task, config.storage.root, cpus, reports)
    tokenized = _tokenize_stage(task, config.storage.root, prepared, cpus, reports)
    trained = _train_stage(task, config, run_name, tracker, prepared, tokenized, reports)
    return {v.name: trained.result[v.name] for v in task.variants}  # the config's order


def _prepare_stage(task: TaskConfig, root: str, cpus: int,
                   reports: list[StageReport]) -> stagecache.StageOutcome:
    from pipeline.stages.prepare import run_prepare

    inputs = {"data": dataclasses.asdict(task.data), "files": _input_files(task),
              "code": _code_version("prepare")}
    return _stage(task, "prepare", _keyed(root, "prepare", inputs), inputs,
                  lambda out: _summary(run_prepare(task.data, out, num_cpus=cpus)), reports)


def _tokenize_stage(task: TaskConfig, root: str, prepared: stagecache.StageOutcome, cpus: int,
                    reports: list[StageReport]) -> stagecache.StageOutcome:
    from pipeline.stages.tokenize import run_tokenize

    inputs = {"prepared": prepared.uri, "tokenizer": dataclasses.asdict(task.tokenizer),
              "max_tokens": task.model.max_length, "code": _code_version("tokenize")}
    return _stage(
        task, "tokenize", _keyed(root, "tokenize", inputs), inputs,
        lambda out: _summary(run_tokenize(task.tokenizer, task.data, prepared.uri, out,
                                          max_tokens=task.model.max_length, num_cpus=cpus)),
        reports,
    )


def _train_stage(task: TaskConfig, config: PipelineConfig, run_name: str,
                 tracker: PipelineTracker, prepared: stagecache.StageOutcome,
                 tokenized: stagecache.StageOutcome, reports: list[StageReport]
                 ) -> stagecache.StageOutcome:
    """The Ray Train run `<root>/train/<run>/<task>-<key>` is the stage's folder, so a resumed
    run (same run name, same config) finds its checkpoints there."""
    from pipeline.stages.tokenize import load_tokenize_result

    inputs = {
        "tokenized": tokenized.uri, "run_name": run_name, "code": _code_version("train"),
        **{key: dataclasses.asdict(getattr(task, key)) for key in ("model", "train", "eval")},
        "variants": [dataclasses.asdict(v) for v in task.variants],
    }
    storage_uri = storage.join(config.storage.root, "train", run_name)
    ray_run_name = f"{task.name}-{stagecache.content_key(inputs)}"
    return _stage(
        task, "train", storage.join(storage_uri, ray_run_name), inputs,
        lambda out: _train(task, config, tracker, load_tokenize_result(tokenized.uri),
                           prepared.result["rows"], storage_uri, ray_run_name),
        reports, clear_partial=False,
    )


def _keyed(root: str, stage: str, inputs: dict[str, Any]) -> str:
    """`<root>/<stage>/<hash of the inputs>`."""
    return storage.join(root, stage, stagecache.content_key(inputs))


def _stage(task: TaskConfig, stage: str, out: str, inputs: dict[str, Any],
           compute: Callable[[str], dict[str, Any]], reports: list[StageReport], *,
           clear_partial: bool = True) -> stagecache.StageOutcome:
    """Run one cached stage with start / finish / skip log lines; a ConfigError it raises
    (an empty corpus, a vocabulary too large for it) gets the task's path prefixed."""
    label = f"{task.name}: {stage}"
    if not storage.exists(storage.join(out, stagecache.MARKER)):
        logger.info("%s: starting -> %s", label, out)
    try:
        outcome = stagecache.run_cached(out, inputs, compute, clear_partial=clear_partial)
    except ConfigError as error:
        if error.field.startswith(("data.", "tokenizer.", "train.", "model.", "eval.")):
            raise in_task(task.name, error) from None
        raise
    if outcome.skipped:
        logger.info("%s: skipped, finished earlier (%s)", label, out)
    else:
        logger.info("%s: finished in %.1f s", label, outcome.wall_s)
    reports.append(StageReport(task.name, stage, out, outcome.skipped, outcome.wall_s))
    return outcome


def _summary(result: Any) -> dict[str, Any]:
    """A stage result's JSON-able fields for its marker (the SentencePiece bytes stay out)."""
    return {k: v for k, v in dataclasses.asdict(result).items() if not isinstance(v, bytes)}


def _input_files(task: TaskConfig) -> list[dict[str, Any]]:
    """Size and date of every local input file: an edited corpus is a new input."""
    files = []
    for split, location in sorted(task.data.files.items()):
        files += [{"split": split, **stagecache.file_fingerprint(path)}
                  for path in storage.list_files(location)]
    return files


def _code_version(stage: str) -> str:
    """A fingerprint of the stage's source files (`STAGE_CODE`)."""
    return stagecache.source_fingerprint(
        [path for pattern in STAGE_CODE[stage] for path in _ROOT.glob(pattern)])


def _train(task: TaskConfig, config: PipelineConfig, tracker: PipelineTracker, tokenized: Any,
           data_rows: dict[str, int], storage_uri: str, ray_run_name: str
           ) -> dict[str, dict[str, Any]]:
    """Create (or reopen) the variants' MLflow child runs, train all variants in one fit, end
    the child runs FINISHED."""
    from pipeline.stages.train import TrainJob, train_and_evaluate

    children = tracker.child_runs(task.name, [v.name for v in task.variants])
    sections = {key: dataclasses.asdict(getattr(task, key))
                for key in ("data", "tokenizer", "model", "train", "eval")}
    for variant in task.variants:
        run_id = children[variant.name].run_id
        params = {**sections, "task": task.name, "variant": variant.name,
                  "attention": variant.attention, "data_rows": data_rows,
                  "tokenizer_pieces": tokenized.vocab_size}
        tracker.log_params(run_id, flatten(params))
        tracker.log_text(run_id, yaml.safe_dump(params, sort_keys=False), "config.yaml")
        tracker.log_bytes(run_id, tokenized.model_proto, "tokenizer/spm.model")
    job = TrainJob(
        task=task.kind, variants=list(task.variants), model=task.model, train=task.train,
        eval=task.eval, data_uri=tokenized.out_uri, tokenizer_model=tokenized.model_proto,
        storage_uri=storage_uri, run_name=ray_run_name, tracking_uri=config.tracking.uri,
        mlflow_run_ids={name: child.run_id for name, child in children.items()},
        num_labels=task.data.num_labels if task.kind == "classification" else None,
    )
    results = train_and_evaluate(job)
    for child in children.values():
        tracker.finish(child.run_id)
    return results


# ---------------------------------------------------------------------------------------------
# Summary


_COLUMNS = {
    "translation": (("BLEU", "bleu"), ("chrF", "chrf")),
    "classification": (("accuracy", "accuracy"), ("F1", "f1")),
}


def format_summary(result: PipelineResult) -> str:
    """The final table (per task: variant, scores, tokens/s, wall time) and where to look."""
    lines = [f"run {result.run_name} of config {result.name}: {result.wall_s:.0f} s", ""]
    for task, variants in result.results.items():
        kind = result.tasks[task]
        scores = _COLUMNS[kind]
        header = ["variant", *(title for title, _ in scores), "tokens/s", "train s", "steps"]
        rows = [[variant, *(_number(values.get(key)) for _, key in scores),
                 _number(values.get("tokens_per_s"), 0), _number(values.get("train_wall_s"), 1),
                 str(values.get("steps", ""))] for variant, values in variants.items()]
        lines += [task if task == kind else f"{task} ({kind})", *_table(header, rows), ""]
    ran = [f"{r.task}/{r.stage}" for r in result.stages if not r.skipped]
    skipped = [f"{r.task}/{r.stage}" for r in result.stages if r.skipped]
    lines += [f"stages run: {', '.join(ran) or 'none'}; skipped (finished earlier): "
              f"{', '.join(skipped) or 'none'}",
              f"outputs: {result.storage_root}",
              f"MLflow: {result.tracking_uri}, experiment {result.experiment!r}, parent run "
              f"{result.parent_run_id}",
              f"browse: {browse_command(result.tracking_uri)}"]
    return "\n".join(lines)


def _number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]

"""MLflow bookkeeping of one pipeline invocation: a parent run and a child run per (task, variant),
or per (task, variant, trial) for the trials of a search.

The orchestrator creates every child run before training starts and hands the ids to the
workers (rank 0 logs metrics and artifacts into them with its own `MlflowClient`); this module only
talks to MLflow from the driver. All calls go through an explicit `MlflowClient`, never the fluent
`mlflow.start_run` API, whose process-global active run would leak between invocations and tests.

Failure handling is `PipelineTracker.failed_on_error`: a run that raises (or is interrupted)
ends with its parent and every unfinished child marked FAILED, the reason in the `heat.failure`
tag and the traceback in a `failure.txt` artifact. Nothing already logged is ever deleted.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag

from pipeline.errors import one_line
from pipeline.mlflow_ui import SCORE_METRICS, mark_experiment, runs_table_url, save_runs_view

logger = logging.getLogger(__name__)

PARAMS_PER_BATCH = 100  # MLflow's limit on params in one log_batch call
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics in one log_batch call
SCORES = ("bleu", "chrf", "accuracy", "f1")
SUMMARY_FIGURES = (*SCORES, "best_val_loss", "tokens_per_s", "peak_mem_mb", "train_wall_s",
                   "steps")
SPREAD_FIGURES = (*SCORES, "best_val_loss")
SPREADS = ("sd", "ci95", "min", "max")
"""Over several seeds (`pipeline.seeds`): `bleu_sd`, `bleu_ci95`, ... beside the mean `bleu`,
for each of SPREAD_FIGURES."""

TAG_RUN_NAME = "heat.run_name"
TAG_CONFIG = "heat.config"
TAG_TASK = "heat.task"
TAG_VARIANT = "heat.variant"
TAG_TRIAL = "heat.trial"
TAG_SEED = "heat.seed"
TAG_SEARCH = "heat.search"
TAG_BEST_TRIAL = "heat.best_trial"
TAG_KIND = "heat.kind"
TAG_DATASET = "heat.dataset"
TAG_STOPPED = "heat.stopped_early"
TAG_FAILURE = "heat.failure"
TAG_PARENT = "mlflow.parentRunId"


UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


def browse_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    """How to look at the runs: the UI command for a local store, the address for a server;
    with `experiment_id`, the link to its runs table with the scores as columns
    (`pipeline.mlflow_ui`: the view `PipelineTracker.open` saves)."""
    server = tracking_uri.startswith(("http://", "https://"))
    if experiment_id is None:
        return f"open {tracking_uri} in a browser" if server else \
            f"mlflow ui --backend-store-uri {tracking_uri}"
    url = runs_table_url(tracking_uri if server else UI_ADDRESS, experiment_id, SCORE_METRICS)
    return f"open {url}" if server else \
        f"mlflow ui --backend-store-uri {tracking_uri}, then open {url}"


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys with string values, the shape MLflow params take."""
    if isinstance(value, Mapping):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if len(text) > PARAM_VALUE_LIMIT:
        text = text[: PARAM_VALUE_LIMIT - 15] + "...(truncated)"
    return {prefix: text}


def task_tags(kind: str, dataset: str) -> dict[str, str]:
    """The tags a task's child runs carry for comparing across runs and searches (the report
    groups by them): the task's kind and its data set's identity (`DataConfig.dataset`)."""
    return {TAG_KIND: kind, TAG_DATASET: dataset}


@dataclass(frozen=True)
class ChildRun:
    task: str
    variant: str
    run_id: str
    trial: str | None = None


class PipelineTracker:
    """The MLflow runs of one invocation. Build with `PipelineTracker.open`."""

    def __init__(self, client: mlflow.MlflowClient, tracking_uri: str, experiment_id: str,
                 parent_run_id: str, run_name: str) -> None:
        self.client = client
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_name = run_name

    @classmethod
    def open(cls, *, tracking_uri: str, experiment: str, artifact_location: str | None,
             run_name: str, config_name: str, resume: bool,
             description: str = "") -> PipelineTracker:
        """Start the parent run, or with `resume` reopen the latest one tagged with `run_name`.
        The experiment is marked a model-training one, described, and given the saved runs
        view with the scores as columns (`pipeline.mlflow_ui`)."""
        client = mlflow.MlflowClient(tracking_uri)
        experiment_id = _experiment_id(client, experiment, artifact_location)
        mark_experiment(client, experiment_id, experiment_description(config_name, description))
        save_runs_view(client, experiment_id)
        parent = _find_parent(client, experiment_id, run_name) if resume else None
        if parent is not None:
            client.update_run(parent, status=RunStatus.to_string(RunStatus.RUNNING))
            logger.info("resuming MLflow parent run %s (%s)", parent, run_name)
        else:
            tags = {TAG_RUN_NAME: run_name, TAG_CONFIG: config_name}
            parent = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
            logger.info("MLflow parent run %s (%s) in experiment %r", parent, run_name, experiment)
        return cls(client, tracking_uri, experiment_id, parent, run_name)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params in batches; re-logging an identical value (a resumed run) is accepted."""
        existing = self.client.get_run(run_id).data.params
        items = [Param(k, v) for k, v in params.items() if existing.get(k) != v]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + PARAMS_PER_BATCH])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        """Log an in-memory file (a SentencePiece model read from storage) as an artifact."""
        import tempfile

        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            with open(path, "wb") as handle:
                handle.write(data)
            self.client.log_artifact(run_id, path, directory or None)

    @classmethod
    def attach(cls, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
               run_name: str) -> PipelineTracker:
        """The tracker of a parent run opened elsewhere (a Tune trial's process)."""
        return cls(mlflow.MlflowClient(tracking_uri), tracking_uri, experiment_id,
                   parent_run_id, run_name)

    def child_runs(self, task: str, variants: list[str], *, trial: str | None = None,
                   seed: int | None = None, tags: Mapping[str, str] | None = None
                   ) -> dict[str, ChildRun]:
        """A running child run per variant of `task` (and `trial`, for one trial of a search;
        `seed`, for one repetition of a run with `seeds`):
        existing ones reopened, missing ones made with `tags` besides the bookkeeping ones
        (`heat.kind`, `heat.dataset`, `heat.search`).

        Reopening matters for `--resume` and for re-scoring: the metrics a killed attempt
        logged stay in the same run, and the continued training appends to them."""
        return {variant: ChildRun(task, variant, open_child_run(
                    self.client, self.experiment_id, self.parent_run_id, self.run_name, task,
                    variant, trial=trial, seed=seed, tags=tags), trial)
                for variant in variants}

    def log_summary(self, results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    prefixes: Mapping[str, str]) -> None:
        """The invocation's results on the parent run: one metric per (task, variant, figure),
        `translation/heat/test/bleu` (scores under `prefixes[task]`, the split or a
        re-scoring's label) or `translation/heat/tokens_per_s`, and the same as a table
        artifact (`summary.json`, which MLflow's artifact view shows as a table). Over several
        seeds each figure is the seeds' mean, with the spread of the scores beside it
        (`test/bleu_ci95`, `seeds`)."""
        now = int(time.time() * 1000)
        metrics, rows = [], []
        keys = [*SUMMARY_FIGURES, *(f"{key}_{s}" for key in SPREAD_FIGURES for s in SPREADS)]
        for task, variants in results.items():
            for variant, values in variants.items():
                figures = {key: float(values[key]) for key in keys
                           if isinstance(values.get(key), int | float)
                           and not isinstance(values.get(key), bool)
                           and math.isfinite(values[key])}
                if "seeds" in values:
                    figures["seeds"] = float(len(values["seeds"]))
                rows.append({"task": task, "variant": variant, **figures})
                for key, value in figures.items():
                    name = (f"{prefixes[task]}/{key}" if key.partition("_")[0] in SCORES
                            else key)
                    metrics.append(Metric(f"{task}/{variant}/{name}", value, now, 0))
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.parent_run_id,
                                  metrics=metrics[start:start + METRICS_PER_BATCH])
        if rows:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            table = {column: [row.get(column) for row in rows] for column in columns}
            self.client.log_table(self.parent_run_id, table, "summary.json")

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, reason: str, details: str) -> None:
        """Mark the parent and every child still RUNNING as FAILED, saying why in each."""
        running = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run_id in [self.parent_run_id, *(run.info.run_id for run in running)]:
            try:
                self.client.log_batch(run_id, tags=[RunTag(TAG_FAILURE, reason)])
                self.client.log_text(run_id, details, "failure.txt")
                self.client.set_terminated(run_id, "FAILED")
            except Exception:  # keep marking the others; the original error is what matters
                logger.exception("could not mark MLflow run %s FAILED", run_id)

    @contextmanager
    def failed_on_error(self) -> Iterator[PipelineTracker]:
        """Mark the runs FAILED if the body raises anything, Ctrl-C included, then re-raise."""
        try:
            yield self
        except BaseException as error:
            reason = failure_reason(error)
            logger.error("pipeline failed (%s); marking MLflow runs FAILED", reason)
            self.fail(reason, "".join(traceback.format_exception(error)))
            raise


def experiment_description(config_name: str, description: str) -> str:
    """The experiment's description (Markdown, shown above its runs)."""
    lines = [f"**{config_name}**: {description}" if description else f"**{config_name}**", "",
             "One parent run per invocation (its summary as metrics `<task>/<variant>/...` and "
             "`summary.json`), one child run per (task, variant): final scores `test/bleu`, "
             "`test/chrf`, `test/accuracy`, `test/f1`, mean `tokens_per_s`, `peak_mem_mb`, "
             "`train_wall_s`; the attention each site ran as `attention_ran.*` params. The "
             "*heat scores* view (Views menu) shows them as columns; tick runs and Compare for "
             "charts."]
    return "\n".join(lines)


def open_child_run(client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str,
                   run_name: str, task: str, variant: str, *, trial: str | None = None,
                   seed: int | None = None, tags: Mapping[str, str] | None = None) -> str:
    """The id of the RUNNING child run of (task, variant, trial, seed) under the parent: the
    existing one reopened, else a new one (started now: its Duration in the UI is its own)."""
    query = f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_TASK}` = '{task}' and " \
            f"tags.`{TAG_VARIANT}` = '{variant}'"
    for run in client.search_runs([experiment_id], query):
        if (run.data.tags.get(TAG_TRIAL) == trial
                and run.data.tags.get(TAG_SEED) == (None if seed is None else str(seed))):
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
    run_tags = {**(tags or {}), TAG_PARENT: parent_run_id, TAG_RUN_NAME: run_name,
                TAG_TASK: task, TAG_VARIANT: variant,
                **({TAG_TRIAL: trial} if trial is not None else {}),
                **({TAG_SEED: str(seed)} if seed is not None else {})}
    name = (f"{task}/{variant}" + (f"/{trial}" if trial is not None else "")
            + (f"/seed{seed}" if seed is not None else ""))
    return client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id


def failure_reason(error: BaseException) -> str:
    """One line for the tag: the root cause under Ray's wrappers (`pipeline.errors.one_line`),
    its type and message, no colour codes, no remote traceback."""
    return one_line(error)


def _experiment_id(client: mlflow.MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it (with its artifact location) on first use.

    Without an explicit location a SQLite-backed experiment would put artifacts in ./mlruns of
    whatever directory the driver runs in; the caller passes one next to the store instead."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        time.sleep(0.5)  # another process created it between our lookup and create
        return client.get_experiment_by_name(name).experiment_id


def _find_parent(client: mlflow.MlflowClient, experiment_id: str, run_name: str) -> str | None:
    """The most recent parent run of `run_name`, if any."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_RUN_NAME}` = '{run_name}' and tags.`{TAG_CONFIG}` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None

"""Read the tracked child runs the report is built from, out of an MLflow store.

A child run (tag `mlflow.parentRunId`) is one data point: a (task, variant) of a pipeline
invocation or one trial of a search. Only FINISHED child runs count; one that lacks a tag,
a score, its validation loss or its hypotheses/references is skipped with the reason counted,
never an error. Two runs of the same variant, data set, configuration and seed (a repeated
invocation) would count one experiment twice: the later one is kept, the earlier skipped.

Metrics are the latest value of each key (`run.data.metrics`); keys with a prefix (`test_beam5/
bleu`, a re-scoring with other eval settings) are not the run's own scores and are ignored.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import ViewType

from pipeline.report.paper import PRIMARY
from pipeline.tracking import (
    TAG_BEST_TRIAL,
    TAG_DATASET,
    TAG_KIND,
    TAG_PARENT,
    TAG_RUN_NAME,
    TAG_SEARCH,
    TAG_TASK,
    TAG_TRIAL,
    TAG_VARIANT,
)
from pipeline.training.outputs import HYPOTHESES_FILE as HYPOTHESES
from pipeline.training.outputs import REFERENCES_FILE as REFERENCES

TAG_REPORT = "heat.report"
REPORT_EXPERIMENT = "heat-reports"

REQUIRED_TAGS = (TAG_VARIANT, TAG_KIND, TAG_DATASET)
VALIDATION_METRIC = "best_val_loss"
SEARCH_BOOKKEEPING = ("search.seed", "search.name")
METRICS = ("bleu", "chrf", "accuracy", "f1", VALIDATION_METRIC, "tokens_per_s", "train_wall_s",
           "peak_mem_mb")


class ReportError(Exception):
    """Why no report can be made: one line for the user (exit code 2), never a traceback."""


@dataclass(frozen=True)
class RunRecord:
    """One usable finished child run: who it is, its configuration, scores and outputs."""

    run_id: str
    experiment: str
    run_name: str
    task: str
    kind: str
    dataset: str
    variant: str
    search: str | None
    trial: str | None
    best_trial: bool
    seed: str | None
    config: tuple[tuple[str, str], ...]  # what groups seeds of one configuration (no seed)
    params: Mapping[str, str]  # attention.*, search.*, train.seed, train.lr
    metrics: Mapping[str, float]
    hypotheses: tuple[str, ...] = field(repr=False)
    references: tuple[str, ...] = field(repr=False)
    start_time: int = 0

    @property
    def score(self) -> float:
        """The primary score: BLEU, or accuracy (a fraction)."""
        return self.metrics[PRIMARY[self.kind]]


@dataclass
class Collection:
    """The runs the report uses, and the child runs it skipped with the reason for each."""

    tracking_uri: str
    experiments: list[str]
    runs: list[RunRecord]
    skipped: list[tuple[str, str, str]]  # (run id, experiment, reason)

    def skip_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(reason for _, _, reason in self.skipped).items()))


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the pipeline's default store under ./runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd()}/runs/mlflow.db"


def open_store(tracking_uri: str) -> mlflow.MlflowClient:
    """A client of an existing store: a SQLite file that is not there is an error, not a new,
    empty store created as a side effect of asking for a report."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"no MLflow store at {tracking_uri} ({path} does not exist)")
    return mlflow.MlflowClient(tracking_uri)


def collect(tracking_uri: str, experiments: list[str] | None = None) -> Collection:
    """Every usable finished child run in `experiments` (default: all but the reports')."""
    client = open_store(tracking_uri)
    chosen = _experiments(client, tracking_uri, experiments)
    names = {e.experiment_id: e.name for e in chosen}
    records, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="heat-report-") as tmp, _quiet_downloads():
        for run in _all_runs(client, list(names)):
            if TAG_PARENT not in run.data.tags:
                continue  # a parent run: its children are the data points
            experiment = names[run.info.experiment_id]
            record_or_reason = _record(client, run, experiment, Path(tmp))
            if isinstance(record_or_reason, str):
                skipped.append((run.info.run_id, experiment, record_or_reason))
            else:
                records.append(record_or_reason)
    records, duplicates = _latest_per_seed(records)
    skipped += duplicates
    if not records:
        counts = Counter(reason for _, _, reason in skipped)
        why = f"; skipped: {_counts_text(counts)}" if counts else ""
        raise ReportError(f"no usable finished child runs in {tracking_uri} (experiments: "
                          f"{', '.join(sorted(names.values())) or 'none'}){why}")
    records.sort(key=lambda r: (r.dataset, r.variant, r.search or "", r.config, r.seed or "",
                                r.run_id))
    return Collection(tracking_uri, sorted(names.values()), records, sorted(skipped))


def _experiments(client: mlflow.MlflowClient, tracking_uri: str,
                 wanted: list[str] | None) -> list[mlflow.entities.Experiment]:
    if not wanted:
        return [e for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
                if e.name != REPORT_EXPERIMENT]
    found = []
    for name in dict.fromkeys(wanted):
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage != "active":
            have = sorted(e.name for e in client.search_experiments())
            raise ReportError(f"no experiment named {name!r} in {tracking_uri} (it has: "
                              f"{', '.join(have) or 'none'})")
        found.append(experiment)
    return found


def _all_runs(client: mlflow.MlflowClient,
              experiment_ids: list[str]) -> Iterator[mlflow.entities.Run]:
    token = None
    while experiment_ids:
        page = client.search_runs(experiment_ids, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _record(client: mlflow.MlflowClient, run: mlflow.entities.Run, experiment: str,
            tmp: Path) -> RunRecord | str:
    """The run as a record, or the reason it cannot be used."""
    tags, info = run.data.tags, run.info
    if info.status != "FINISHED":
        return f"status {info.status}"
    missing_tag = next((t for t in REQUIRED_TAGS if not tags.get(t)), None)
    if missing_tag:
        return f"missing tag {missing_tag}"
    kind = tags[TAG_KIND]
    if kind not in PRIMARY:
        return f"unknown task kind {kind!r}"
    metrics = run_metrics(run.data.metrics)
    missing_metric = next((m for m in (PRIMARY[kind], VALIDATION_METRIC) if m not in metrics), None)
    if missing_metric:
        return f"missing metric {missing_metric}"
    texts = _outputs(client, info.run_id, tmp)
    if isinstance(texts, str):
        return texts
    params = run.data.params
    seed = params.get("search.seed", params.get("train.seed"))
    kept = {k: v for k, v in params.items()
            if k.startswith(("attention.", "search.")) or k in ("train.seed", "train.lr")}
    return RunRecord(
        run_id=info.run_id, experiment=experiment, run_name=tags.get(TAG_RUN_NAME, ""),
        task=tags.get(TAG_TASK, ""), kind=kind, dataset=tags[TAG_DATASET],
        variant=tags[TAG_VARIANT], search=tags.get(TAG_SEARCH), trial=tags.get(TAG_TRIAL),
        best_trial=tags.get(TAG_BEST_TRIAL, "").lower() == "true", seed=seed,
        config=configuration(params), params=dict(sorted(kept.items())), metrics=metrics,
        hypotheses=texts[0], references=texts[1], start_time=info.start_time or 0,
    )


def run_metrics(logged: Mapping[str, float]) -> dict[str, float]:
    """The report's figures of a run by their plain names (`bleu`, `tokens_per_s`, ...): a
    score from the run's own test evaluation (`test/bleu`), or its name before scores were
    logged under the split (`bleu`); NaN left out. Re-scorings (`test_beam5/bleu`) are not it."""
    metrics = {}
    for key in METRICS:
        value = logged.get(f"test/{key}", logged.get(key))
        if value is not None and not math.isnan(float(value)):
            metrics[key] = float(value)
    return metrics


def configuration(params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The configuration a run's seeds share: its attention params, `train.lr`, and the
    searched `search.*` params other than the seed (and `search.name`, the search's name).

    A searched param the resolved config already holds (`search.rank` with `attention.rank`,
    `search.lr` with `train.lr`) adds nothing, so it is left out: a trial and a plain run of
    the same configuration then group together."""
    resolved = {k: v for k, v in params.items() if k.startswith("attention.") or k == "train.lr"}
    searched = {f"search.{key}": value for key, value in searched_params(params).items()
                if not any(k.endswith(f".{key}") for k in resolved)}
    return tuple(sorted({**resolved, **searched}.items()))


def searched_params(params: Mapping[str, str]) -> dict[str, str]:
    """A trial's searched values by name (`rank`, `basis`, `lr`): its `search.*` params but the
    seed and the search's name (bookkeeping the trials also log)."""
    return {key.removeprefix("search."): value for key, value in params.items()
            if key.startswith("search.") and key not in SEARCH_BOOKKEEPING}


_SITES = ("encoder_self", "decoder_self", "cross")


def config_text(config: tuple[tuple[str, str], ...]) -> str:
    """`key=value, ...`; an attention parameter with one value at every site it is set at is
    written once (`attention.rank=8`, not three times)."""
    values: dict[str, dict[str, str]] = {}
    other: dict[str, str] = {}
    for key, value in config:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "attention" and parts[1] in _SITES:
            values.setdefault(parts[2], {})[parts[1]] = value
        else:
            other[key] = value
    for parameter, by_site in values.items():
        if len(set(by_site.values())) == 1:
            other[f"attention.{parameter}"] = next(iter(by_site.values()))
        else:
            other.update({f"attention.{site}.{parameter}": v for site, v in by_site.items()})
    return ", ".join(f"{k}={v}" for k, v in sorted(other.items())) or \
        "(no attention params recorded)"


def read_lines(path: Path) -> tuple[str, ...]:
    """One entry per line as the pipeline writes them ("line\\n" each); only "\\n" separates,
    so an empty hypothesis stays an entry and no other Unicode line break splits one."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return tuple(lines[:-1] if text.endswith("\n") else lines)


def _outputs(client: mlflow.MlflowClient, run_id: str,
             tmp: Path) -> tuple[tuple[str, ...], tuple[str, ...]] | str:
    present = {f.path for f in client.list_artifacts(run_id) if not f.is_dir}
    for name in (HYPOTHESES, REFERENCES):
        if name not in present:
            return f"missing artifact {name}"
    folder = tmp / run_id
    folder.mkdir()
    hyps, refs = (read_lines(Path(client.download_artifacts(run_id, name, str(folder))))
                  for name in (HYPOTHESES, REFERENCES))
    if not refs:
        return "empty references.txt"
    if len(hyps) != len(refs):
        return "hypotheses.txt and references.txt differ in length"
    return hyps, refs


def _latest_per_seed(
        records: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[str, str, str]]]:
    """One run per (data set, variant, configuration, seed): the latest started."""
    latest: dict[tuple, RunRecord] = {}
    for record in sorted(records, key=lambda r: (r.start_time, r.run_id)):
        latest[(record.dataset, record.variant, record.config, record.seed)] = record
    kept = set(id(r) for r in latest.values())
    skipped = [(r.run_id, r.experiment, "duplicate: a later run has the same configuration "
                                        "and seed") for r in records if id(r) not in kept]
    return list(latest.values()), skipped


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No tqdm bar per downloaded artifact on stderr."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))

"""The report as an MLflow run: every file it wrote, as artifacts of a run named
`report-<timestamp>` (tag `heat.report` = true) in experiment `heat-reports` of the same store.

The reports' experiment is left out of what later reports read by default. A report run that
fails while logging is marked FAILED; nothing logged is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
from mlflow.entities import Param

from pipeline.report.collect import REPORT_EXPERIMENT, TAG_REPORT
from pipeline.tracking import PARAM_VALUE_LIMIT


def report_artifact_location(tracking_uri: str) -> str | None:
    """Beside a SQLite store, as the pipeline does (`<root>/mlflow.db`, `<root>/mlartifacts`);
    a server picks its own. Without it a SQLite experiment would write into ./mlruns."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return None


def log_report(tracking_uri: str, files: Sequence[Path], *, run_name: str,
               params: Mapping[str, str]) -> str:
    """The new report run's id, its files logged at the artifact root."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(REPORT_EXPERIMENT)
    if experiment is None:
        experiment_id = client.create_experiment(
            REPORT_EXPERIMENT, artifact_location=report_artifact_location(tracking_uri))
    else:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        experiment_id = experiment.experiment_id
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={TAG_REPORT: "true"}).info.run_id
    try:
        client.log_batch(run_id, params=[Param(key, value[:PARAM_VALUE_LIMIT])
                                         for key, value in params.items()])
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id

"""Rank 0's writes into a variant's MLflow child run: metrics, tags, artifacts, the loss curve.

The orchestrator creates the run (and ends it, or marks it FAILED); this only logs into it, so a
resumed fit keeps appending to the same run. Only rank 0 holds a `VariantLog`: the other ranks
never open the tracking store (one SQLite writer, no "database is locked").
"""

from __future__ import annotations

import time
from pathlib import Path

from typing import TYPE_CHECKING

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

if TYPE_CHECKING:
    from pipeline.config import Variant
    from pipeline.training.job import TrainJob

LOSS_CURVE_FILE = "loss_curve.png"
STEP_METRICS = ("train/loss", "train/tokens_per_s", "lr", "peak_mem_mb", "val/loss")
"""What training logs over steps (the rest is logged once, at the end)."""


class VariantLog:
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.logged_through: dict[str, int] = {}
        """Per metric, the steps up to which a killed attempt logged it: not logged again."""

    def resume(self, keys: tuple[str, ...] = STEP_METRICS) -> None:
        """A resumed fit replays the steps between its checkpoint and the kill: keep the values
        the killed attempt logged for them (the same, by deterministic resume), so no step of
        the run's history holds two values."""
        for key in keys:
            steps = [metric.step for metric in self.client.get_metric_history(self.run_id, key)]
            self.logged_through[key] = max(steps, default=0)

    @classmethod
    def of(cls, job: TrainJob, variant: Variant) -> VariantLog:
        """The variant's run: the one the job names, else opened now from `job.child_runs`
        (created with the variant's params, config and tokenizer, or the killed attempt's
        reopened)."""
        run_id = job.mlflow_run_ids.get(variant.name)
        if run_id is not None:
            return cls(job.tracking_uri, run_id)
        from pipeline.tracking import PipelineTracker, flatten

        plan = job.child_runs
        assert plan is not None  # TrainJob checks that every variant has one or the other
        tracker = PipelineTracker.attach(tracking_uri=job.tracking_uri,
                                         experiment_id=plan.experiment_id,
                                         parent_run_id=plan.parent_run_id, run_name=plan.run_name)
        run_id = tracker.child_runs(plan.task, [variant.name], seed=plan.seed,
                                    tags=plan.tags)[variant.name].run_id
        params = plan.params[variant.name]
        tracker.log_params(run_id, flatten(params))
        tracker.log_text(run_id, yaml.safe_dump(params, sort_keys=False), "config.yaml")
        tracker.log_bytes(run_id, job.tokenizer_model, "tokenizer/spm.model")
        return cls(job.tracking_uri, run_id)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """One round trip for several metrics at the same step."""
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in values.items()
                 if step is None or step > self.logged_through.get(key, -1)]
        if not batch:
            return
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def tags(self, values: dict[str, str]) -> None:
        batch = [RunTag(key, str(value)) for key, value in values.items()]
        self.client.log_batch(self.run_id, tags=batch, synchronous=True)

    def artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        if local_path.is_dir():
            self.client.log_artifacts(self.run_id, str(local_path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def history(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric, the last value per step: a resumed run re-logs the
        steps between its checkpoint and the kill, and the later values are the ones kept."""
        latest: dict[int, float] = {}
        for metric in sorted(self.client.get_metric_history(self.run_id, key),
                             key=lambda m: m.timestamp):
            latest[metric.step] = metric.value
        steps = sorted(latest)
        return steps, [latest[s] for s in steps]

    def plot_loss_curve(self, path: Path, title: str) -> Path:
        """train/loss and val/loss against the optimizer step, from the tracked history."""
        import matplotlib

        matplotlib.use("Agg")  # workers have no display
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 4))
        for key, style in (("train/loss", "-"), ("val/loss", "o-")):
            steps, values = self.history(key)
            if steps:
                axes.plot(steps, values, style, label=key, markersize=3)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path

"""One trial of a search: train and evaluate one (task, variant, parameters), tracked as a child
run of the search's parent run.

The trial is a Ray Tune function trainable that builds one typed `TrainJob` and calls
`pipeline.job.train_and_evaluate` with Ray Train's `TuneReportCallback`: the Ray Train run's
checkpoint reports (step, latest validation loss) reach Tune as the trial's results, which ASHA
compares; after evaluation the trial reports its scores once more. Its Ray Train run lives at
`<search folder>/trials/<trial id>`, so a trial restarted by `--resume` continues from its
last checkpoint, and its MLflow child run is found again by the trial id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.config import TaskConfig, TrainConfig
from pipeline.config.tune import SearchConfig, trial_variant
from pipeline.tracking import TAG_SEARCH, PipelineTracker, flatten, task_tags
from pipeline.training.job import TrainJob

RESULT_KEYS = ("val_loss", "best_val_loss", "steps", "tokens_per_s", "train_wall_s",
               "peak_mem_mb", "bleu", "chrf", "accuracy", "f1")
"""The final result a trial reports to Tune (besides its parameters)."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one search shares (handed to each by `tune.with_parameters`)."""

    search_name: str
    search: SearchConfig
    task: TaskConfig
    data_uri: str
    tokenizer_model: bytes
    trials_uri: str
    """Ray Train storage of the trials: `<trials_uri>/<trial id>` is one trial's run."""
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_name: str
    stats: dict[str, Any]
    """Upstream facts logged with every trial (data rows, tokenizer pieces)."""
    slots: str
    """The name of the search's slot keeper (`pipeline.search.slots`)."""


def trial_train(setup: TrialSetup, params: dict[str, Any]) -> TrainConfig:
    """The task's training section with the trial's seed (and learning rate)."""
    changes: dict[str, Any] = {"seed": int(params["seed"])}
    if "lr" in params:
        changes["lr"] = float(params["lr"])
    return dataclasses.replace(setup.task.train, **changes)


def trial_label(setup: TrialSetup, params: dict[str, Any]) -> str:
    """`rank=16 seed=0`: the searched values, for run names and progress lines."""
    keys = [*setup.search.grid, "seed", *(["lr"] if "lr" in params else [])]
    return " ".join(f"{key}={_short(params.get(key, '?'))}" for key in keys)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The trainable: Tune calls it with the trial's parameters."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.job import train_and_evaluate

    from pipeline.search import slots

    trial_id = ray.tune.get_context().get_trial_id()
    slots.acquire(setup.slots, trial_id)  # the driver releases it when the trial ends
    task, search = setup.task, setup.search
    variant = trial_variant(task, search.variant, {k: params[k] for k in search.grid})
    train = trial_train(setup, params)
    tracker = PipelineTracker.attach(
        tracking_uri=setup.tracking_uri, experiment_id=setup.experiment_id,
        parent_run_id=setup.parent_run_id, run_name=setup.run_name)
    child = tracker.child_runs(
        task.name, [variant.name], trial=trial_id,
        tags={**task_tags(task.kind, task.data.dataset), TAG_SEARCH: setup.search_name},
    )[variant.name]
    tracker.client.update_run(child.run_id, name=f"{setup.search_name}/{variant.name} "
                                                 f"{trial_label(setup, params)}")
    tracker.log_params(child.run_id, flatten({
        **task.sections(), "train": dataclasses.asdict(train), "task": task.name,
        "variant": variant.name, "attention": variant.attention_dict(),
        "attention_ran": variant.attention_ran(), **setup.stats,
        "search": {"name": setup.search_name, **params},
    }))
    job = TrainJob(
        task=task.kind, variants=[variant], model=task.model, train=train, eval=task.eval,
        data_uri=setup.data_uri, tokenizer_model=setup.tokenizer_model,
        storage_uri=setup.trials_uri, run_name=trial_id, tracking_uri=setup.tracking_uri,
        mlflow_run_ids={variant.name: child.run_id},
        num_labels=task.data.num_labels if task.kind == "classification" else None,
    )
    result = train_and_evaluate(job, run_callbacks=[TuneReportCallback()])[variant.name]
    ray.tune.report({key: float(result[key]) for key in RESULT_KEYS if key in result})
    tracker.finish(child.run_id)

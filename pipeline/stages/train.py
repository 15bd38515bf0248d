"""The train stage: every variant of a task trained in one Ray Train + DeepSpeed run.

One `TorchTrainer.fit()` trains ALL of a job's attention variants, one after another: a fit
costs seconds of start-up on CPU (worker processes, the process group), which twelve
separate fits would pay twelve times. Each variant gets a fresh DeepSpeed engine inside
the same workers; the checkpoint records which variants are finished and with which results, so
a killed run restarted with the same (storage_uri, run_name) skips them and resumes the current
one from its last step (`pipeline.training.worker`). Each variant's best weights go to storage,
where the evaluate stage reads them.

`train` needs a running Ray (the orchestrator's `ray.init`, or it starts a local one) and
returns the per-variant results the workers stored in the final checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any


from heat.validation import ConfigError
from pipeline import storage
from pipeline.training.checkpoints import prune_unregistered
from pipeline.config import TaskConfig, TrainConfig, Variant
from pipeline.stages.base import Stage, StageContext
from pipeline.tracking import task_tags
from pipeline.training.job import ChildRunPlan, TrainJob
from pipeline.training.progress import ProgressSink, progress_printer
from pipeline.training.state import PROGRESS_FILE

logger = logging.getLogger(__name__)


def train(job: TrainJob, *, run_callbacks: list[Any] | None = None,
          progress: str | None = None) -> dict[str, dict[str, Any]]:
    """Train every variant of `job` in one Ray Train run; per variant its training summary
    (steps, tokens/s, best validation loss, where its best weights are, ...).

    Resumes from the run's latest checkpoint when (storage_uri, run_name) was used before.
    Raises when training fails (the caller marks the MLflow runs FAILED). run_callbacks go to
    RunConfig.callbacks (a Ray Tune trial's `TuneReportCallback`: each checkpoint reports
    variant, step and best_val_loss). Starts a local Ray when none is running. With a
    `progress` label, rank 0's progress lines are logged on this process as `<label>: ...`
    (`pipeline.training.progress`).
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    _check_cpus_left_for_data(job.train)
    _check_splits(job)
    with progress_printer(progress) if progress else contextlib.nullcontext() as sink:
        result = _fit(job, sink, run_callbacks)
    kept = [result.checkpoint, *(c for c, _ in result.best_checkpoints or [])]
    prune_unregistered(storage.join(job.storage_uri, job.run_name), kept)
    return _read_results(result.checkpoint, job)


def _fit(job: TrainJob, sink: ProgressSink | None, run_callbacks: list[Any] | None) -> Any:
    """The Ray Train run of `job` (each rank reads its rows of the splits itself,
    `pipeline.training.rankdata`); its `ray.train.Result`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from pipeline.training.worker import train_worker

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job, "progress": sink},
        scaling_config=scaling_config(job.train),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=job.storage_uri,
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            callbacks=run_callbacks,
            worker_runtime_env={"env_vars": worker_env(job.train)},
        ),
    )
    return trainer.fit()  # raises TrainingFailedError when the workers fail


def _check_splits(job: TrainJob) -> None:
    """Every split the job reads (training, validation, evaluation) exists, before the fit."""
    for split in sorted({"train", "validation", job.eval.split}):
        if not storage.exists(job.split_uri(split)):
            raise ConfigError("data_uri", f"{job.split_uri(split)} does not exist: the tokenize "
                                          f"stage writes train, validation and test splits")


def _check_cpus_left_for_data(train: TrainConfig) -> None:
    """Ray Data reads the splits with tasks that each need a CPU the workers do not hold.

    When the workers fit the cluster but take all of its CPUs (2 workers x 1 CPU on 2 cores),
    the read tasks never start and the fit hangs; say so before starting it. (Workers that do
    not fit wait for an autoscaler, which adds CPUs for the reads too.)
    """
    import ray

    check_cpus_left_for_data(train, ray.cluster_resources().get("CPU", 0.0), autoscaled=True)


def check_cpus_left_for_data(train: TrainConfig, total: float, *, autoscaled: bool,
                             where: str = "the cluster's") -> None:
    """The workers (num_workers x cpus_per_worker) leave at least one of `total` CPUs to Ray
    Data's read tasks, or a ConfigError on train.cpus_per_worker. `autoscaled`: workers that
    do not fit at all pass (they wait for an autoscaler); otherwise (a local instance of `total`
    CPUs, `heat-pipeline check`) they fail too. `where` names the CPUs' owner in the message."""
    wanted = train.num_workers * train.cpus_per_worker
    if total >= wanted + 1 or (autoscaled and wanted > total):
        return
    most = (total - 1) / train.num_workers
    hint = f"use at most {most:g}" if most > 0 else "give Ray at least 2 CPUs"
    raise ConfigError(
        "train.cpus_per_worker",
        f"{train.num_workers} workers x {train.cpus_per_worker} CPU leave less than one of "
        f"{where} {total:g} CPUs for Ray Data's read tasks and the run would hang; {hint}",
    )


def scaling_config(train: TrainConfig) -> Any:
    """The workers of a fit: `num_workers`, each with `cpus_per_worker` CPUs (and a GPU)."""
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                         resources_per_worker={"CPU": train.cpus_per_worker})


def worker_env(train: TrainConfig) -> dict[str, str]:
    threads = str(train.torch_threads)
    # DS_ACCELERATOR must be set before deepspeed is first imported in the worker.
    return {
        "DS_ACCELERATOR": "cuda" if train.use_gpu else "cpu",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


def _read_results(checkpoint, job: TrainJob) -> dict[str, dict[str, Any]]:
    if checkpoint is None:
        raise RuntimeError(f"run {job.run_name} ended without a checkpoint holding its results")
    with checkpoint.as_directory() as folder:
        with open(f"{folder}/{PROGRESS_FILE}", encoding="utf-8") as handle:
            finished = json.load(handle)["finished"]
    missing = [v.name for v in job.variants if v.name not in finished]
    if missing:
        raise RuntimeError(f"run {job.run_name} ended without results for {missing}")
    return {v.name: finished[v.name] for v in job.variants}



class TrainStage(Stage):
    name = "train"
    sections = ("model", "train")
    code = ("pipeline/stages/train.py", "pipeline/batching.py", "pipeline/training/*.py",
            "heat/**/*.py", "heat/**/*.cpp")
    per_run = True
    keep_partial = True

    def inputs(self, context: StageContext) -> dict[str, Any]:
        task = context.task
        return {"tokenized": context.outcomes["tokenize"].uri, **task.sections("model", "train"),
                "variants": [{"name": v.name, "attention": v.attention_dict()}
                             for v in task.variants]}

    def run(self, context: StageContext, out_uri: str) -> dict[str, Any]:
        """Train; rank 0 opens (or reopens) each variant's MLflow child run as its training
        starts, with what it trains as params (`ChildRunPlan`)."""
        task, tracker = context.task, context.tracker
        tokenized = context.outcomes["tokenize"]
        model_proto = storage.read_bytes(storage.join(tokenized.uri, "spm.model"))
        plan = ChildRunPlan(
            experiment_id=tracker.experiment_id, parent_run_id=tracker.parent_run_id,
            run_name=tracker.run_name, task=task.name, seed=context.seed,
            tags=task_tags(task.kind, task.data.dataset),
            params={variant.name: variant_params(task, variant, {
                "data_rows": context.outcomes["prepare"].result["rows"],
                "tokenizer_pieces": tokenized.result["vocab_size"]})
                for variant in task.variants})
        job = TrainJob.for_task(task, data_uri=tokenized.uri, tokenizer_model=model_proto,
                                train_uri=out_uri, tracking_uri=tracker.tracking_uri,
                                child_runs=plan)
        return train(job, progress=context.label)


def variant_params(task: TaskConfig, variant: Variant, extra: dict[str, Any]) -> dict[str, Any]:
    """What a variant's child run records as params: the task's sections, the attention as
    written (`attention.*`, what the report groups seeds by) and as it runs at each site
    (`attention_ran.*`, with fallbacks marked), and `extra`."""
    return {**task.sections(), "task": task.name, "variant": variant.name,
            "attention": variant.attention_dict(), "attention_ran": variant.attention_ran(),
            **extra}

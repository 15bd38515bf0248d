"""The train stage: configs, the job a Ray Tune trial runs, and its driver `train_and_evaluate`.

One `TorchTrainer.fit()` trains and evaluates ALL of a job's attention variants, one after
another: a fit costs 16-45 s of start-up on CPU (worker processes, process group, dataset
readers), which twelve separate fits would pay twelve times. Each variant gets a fresh DeepSpeed
engine inside the same workers; the checkpoint records which variants are finished and with which
results, so a killed run restarted with the same (storage_uri, run_name) skips them and resumes
the current one from its last step (`pipeline.training.worker`).

The driver needs a running Ray (the orchestrator's `ray.init`) and returns the per-variant
results the workers stored in the final checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from heat.attention import AttentionSpec, spec_from_dict
from heat.attention import SpecError
from heat.models import AttentionSites, ClassifierConfig, Seq2SeqConfig
from heat.validation import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_fraction,
    check_int,
)
from pipeline.stages.evaluate import EvalConfig
from pipeline.training.state import PROGRESS_FILE

logger = logging.getLogger(__name__)

TASKS = ("translation", "classification")
DATASET = "splits"
"""The name of the Ray dataset (all splits, with a `path` column) the workers read."""


# ---------------------------------------------------------------------------------------------
# Config sections


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Model sizes shared by all variants of a task; the attention comes from each variant."""

    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    """Encoder layers (the classifier's only stack)."""
    num_decoder_layers: int = 6
    """Decoder layers (translation only)."""
    ffn_dim: int = 2048
    dropout: float = 0.1
    norm_first: bool = True
    """Pre-norm (True) or post-norm (False)."""
    max_length: int = 256
    """Longest sequence (eos included) the model accepts; tokenize truncates to it."""
    label_smoothing: float = 0.1
    """Translation loss only (the classifier's cross-entropy is unsmoothed)."""
    pooling: Literal["mean", "first"] = "mean"
    """Classification: mean over non-padding positions, or the first token."""
    num_segments: int = 2
    """Classification: segment embeddings (2 for sentence pairs)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers",
                     "ffn_dim", "num_segments"):
            check_int(name, getattr(self, name), 1)
        check_int("max_length", self.max_length, 2)
        if self.d_model % self.num_heads:
            raise ConfigError(
                "d_model", f"must be divisible by num_heads={self.num_heads}, got {self.d_model}"
            )
        check_fraction("dropout", self.dropout)
        check_fraction("label_smoothing", self.label_smoothing)
        check_bool("norm_first", self.norm_first)
        check_choice("pooling", self.pooling, ("mean", "first"))

    def seq2seq(self, vocab_size: int, attention: AttentionSites) -> Seq2SeqConfig:
        return Seq2SeqConfig(
            vocab_size=vocab_size, d_model=self.d_model, num_heads=self.num_heads,
            num_encoder_layers=self.num_encoder_layers, num_decoder_layers=self.num_decoder_layers,
            ffn_dim=self.ffn_dim, dropout=self.dropout, norm_first=self.norm_first,
            max_length=self.max_length, label_smoothing=self.label_smoothing, attention=attention,
        )

    def classifier(
        self, vocab_size: int, num_classes: int, attention: AttentionSpec
    ) -> ClassifierConfig:
        return ClassifierConfig(
            vocab_size=vocab_size, num_classes=num_classes, d_model=self.d_model,
            num_heads=self.num_heads, num_layers=self.num_encoder_layers, ffn_dim=self.ffn_dim,
            dropout=self.dropout, norm_first=self.norm_first, max_length=self.max_length,
            num_segments=self.num_segments, pooling=self.pooling, attention_spec=attention,
        )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Ray Train scaling, DeepSpeed and optimisation settings, identical for every variant."""

    num_workers: int = 1
    """Ray Train workers (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL; otherwise CPU, gloo and DS_ACCELERATOR=cpu."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per worker. Ray Data needs a CPU left over to read the splits."""
    threads_per_worker: int = 0
    """torch intra-op threads per worker; 0: cpus_per_worker rounded up."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0, 1 or 2 (3 partitions the weights, which the best-weights copy
    and decoding read whole)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """bf16 or fp32 on CPU; fp16 (dynamic loss scaling) needs a GPU."""
    lr: float = 5e-4
    """Peak learning rate, reached at the end of the warmup."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    weight_decay: float = 0.0
    warmup_steps: int = 4000
    """Optimizer steps of linear warmup from 0 to lr."""
    schedule: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "inverse_sqrt"
    """Decay after warmup: to 0 at max_steps (linear, cosine), lr sqrt(warmup / step), or none."""
    max_steps: int = 100_000
    """Optimizer steps per variant (every rank runs exactly this many; epochs cycle)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    tokens_per_batch: int = 4096
    """Padded tokens (source + target) per micro-batch and rank."""
    val_every: int = 1000
    """Optimizer steps between validation losses (also after the last step)."""
    early_stopping_patience: int = 0
    """Stop a variant after this many validations without a new best loss; 0 never stops."""
    checkpoint_every: int = 1000
    """Optimizer steps between checkpoints (resumable points); 0: only when a variant ends."""
    keep_checkpoints: int = 2
    """Checkpoints kept in storage (the latest always among them)."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from (restarting from the latest checkpoint)."""
    seed: int = 0
    log_every: int = 50
    """Optimizer steps between train/loss, lr and tokens/s metrics."""

    def __post_init__(self) -> None:
        check_int("num_workers", self.num_workers, 1)
        check_bool("use_gpu", self.use_gpu)
        check_float("cpus_per_worker", self.cpus_per_worker, 0.0, 1024.0)
        check_int("threads_per_worker", self.threads_per_worker, 0)
        check_int("zero_stage", self.zero_stage, 0, 2)
        check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        if self.precision == "fp16" and not self.use_gpu:
            raise ConfigError("precision", "fp16 needs a GPU (use_gpu: true); use bf16 or fp32 "
                                           "on CPU")
        check_float("lr", self.lr, 0.0, 1.0)
        if not isinstance(self.betas, list) or len(self.betas) != 2:
            raise ConfigError("betas", f"must be a list of two numbers, got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_fraction(f"betas[{i}]", beta)
        check_float("eps", self.eps, 0.0, 1.0)
        check_fraction("weight_decay", self.weight_decay)
        check_choice("schedule", self.schedule, ("linear", "cosine", "inverse_sqrt", "constant"))
        for name in ("max_steps", "grad_accum_steps", "tokens_per_batch", "val_every",
                     "keep_checkpoints", "log_every"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "early_stopping_patience", "checkpoint_every",
                     "max_failures", "seed"):
            check_int(name, getattr(self, name), 0)
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(
                "warmup_steps",
                f"must be smaller than max_steps={self.max_steps}, got {self.warmup_steps} "
                f"(the learning rate would never reach lr)",
            )
        clip = self.grad_clip
        if not isinstance(clip, (int, float)) or isinstance(clip, bool) \
                or not 0.0 <= clip < float("inf"):
            raise ConfigError("grad_clip", f"must be a number >= 0 (0: off), got {clip!r}")

    @property
    def torch_threads(self) -> int:
        return self.threads_per_worker or max(1, -int(-self.cpus_per_worker // 1))


# ---------------------------------------------------------------------------------------------
# The job


_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One attention variant to train: a name (paths, MLflow) and its attention.

    Translation: a mapping site -> spec in `heat.models.AttentionSites.from_dict` format.
    Classification: one spec mapping such as `{"name": "heat", "rank": 8}`.
    """

    name: str
    attention: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _VARIANT_NAME.fullmatch(self.name):
            raise ConfigError("variants", f"variant name must match {_VARIANT_NAME.pattern} "
                                          f"(it names folders and runs), got {self.name!r}")


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """Everything one `train_and_evaluate` call needs; built by the orchestrator (or a Tune trial).

    Validated on construction: every variant's model config is built here, so a bad attention
    spec or size fails before Ray starts anything.
    """

    task: str
    """'translation' or 'classification'."""
    variants: list[Variant]
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    data_uri: str
    """The tokenize stage's output: {train,validation,test}.parquet."""
    tokenizer_model: bytes
    """The SentencePiece model proto (vocabulary size, detokenization on the workers)."""
    storage_uri: str
    """RunConfig.storage_path: checkpoints, hypotheses and best weights go under it."""
    run_name: str
    """RunConfig.name: the same (storage_uri, run_name) resumes a killed run."""
    tracking_uri: str
    mlflow_run_ids: dict[str, str]
    """Variant name -> its MLflow child run, created by the orchestrator."""
    num_labels: int | None = None
    """Classification: number of classes (labels 0 .. num_labels - 1)."""

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        if not self.variants:
            raise ConfigError("variants", "at least one variant is required")
        names = [v.name for v in self.variants]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ConfigError(f"variants.{duplicate}", "variant names must be unique")
        missing = [n for n in names if n not in self.mlflow_run_ids]
        if missing:
            raise ConfigError("mlflow_run_ids", f"no MLflow run id for variant(s) {missing}")
        if self.task == "classification":
            check_int("num_labels", self.num_labels, 2)
        self._check_budget()
        if self.vocab_size < 4:  # also parses the model: a bad one fails before the variants
            raise ConfigError("tokenizer_model", f"has {self.vocab_size} pieces; pad, bos, eos "
                                                 f"and unk alone take 4")
        for variant in self.variants:
            self.model_config(variant)

    def _check_budget(self) -> None:
        columns = 2 if self.task == "translation" else 1
        if self.train.tokens_per_batch < columns * self.model.max_length:
            raise ConfigError(
                "train.tokens_per_batch",
                f"must be >= {columns * self.model.max_length} ({columns} x model.max_length="
                f"{self.model.max_length}) so that the longest example fits a batch, got "
                f"{self.train.tokens_per_batch}",
            )

    @cached_property
    def vocab_size(self) -> int:
        import sentencepiece as spm

        try:
            processor = spm.SentencePieceProcessor(model_proto=self.tokenizer_model)
        except (RuntimeError, TypeError) as error:
            raise ConfigError("tokenizer_model", f"is not a SentencePiece model: {error}") from None
        return processor.get_piece_size()

    def model_config(self, variant: Variant) -> Seq2SeqConfig | ClassifierConfig:
        """The heat.models config of a variant; ConfigError naming the variant when invalid."""
        try:
            if self.task == "translation":
                sites = AttentionSites.from_dict(variant.attention)
                return self.model.seq2seq(self.vocab_size, sites)
            spec = spec_from_dict(variant.attention)
            assert self.num_labels is not None  # checked in __post_init__
            return self.model.classifier(self.vocab_size, self.num_labels, spec)
        except (ConfigError, SpecError) as error:
            raise ConfigError(f"variants.{variant.name}.{error.field}",
                              str(error).split(": ", 1)[1]) from None

    def result_uri(self, variant: str) -> str:
        """Folder of a variant's hypotheses and best weights (beside Ray's checkpoints)."""
        return f"{self.storage_uri.rstrip('/')}/{self.run_name}/results/{variant}"


# ---------------------------------------------------------------------------------------------
# Driver


def train_and_evaluate(
    job: TrainJob, *, run_callbacks: list[Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Train and evaluate every variant of `job` in one Ray Train run; results per variant.

    Resumes from the run's latest checkpoint when (storage_uri, run_name) was used before.
    Raises when training fails (the orchestrator marks the MLflow runs FAILED).
    run_callbacks go to RunConfig.callbacks: a Ray Tune trial passes
    `ray.tune.integration.ray_train.TuneReportCallback()` so that the checkpoint reports
    (variant, step, best_val_loss) and each variant's final scores reach Tune.
    Starts a local Ray when none is running (as Ray Data and Ray Train would).
    """
    import ray
    import ray.data
    from ray.data import ExecutionOptions
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    from pipeline.training.worker import train_worker

    if not ray.is_initialized():
        ray.init()
    _check_cpus_left_for_data(job.train)
    splits = sorted({"train", "validation", job.eval.split})
    # One dataset over the three files: each Ray Data execution costs seconds of start-up,
    # and the workers route the rows back to their split by file name.
    files = [f"{job.data_uri.rstrip('/')}/{split}.parquet" for split in splits]
    dataset = ray.data.read_parquet(files, include_paths=True)
    # Every worker re-reads this stream for each pass; their progress bars would go on printing
    # through the driver's console after the run's summary. Training logs its own progress.
    dataset.context.enable_progress_bars = False
    datasets = {DATASET: dataset}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=job.train.num_workers,
            use_gpu=job.train.use_gpu,
            resources_per_worker={"CPU": job.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=job.storage_uri,
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            callbacks=run_callbacks,
            worker_runtime_env={"env_vars": _worker_env(job.train)},
        ),
        datasets=datasets,
        # Not split by Ray: each rank keeps rows position % world == rank of each split of the
        # order-preserving stream (pipeline.batching.RankRows): reproducible, nothing dropped.
        dataset_config=DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    result = trainer.fit()  # raises TrainingFailedError when the workers fail
    return _read_results(result.checkpoint, job)


def _check_cpus_left_for_data(train: TrainConfig) -> None:
    """Ray Data reads the splits with tasks that each need a CPU the workers do not hold.

    When the workers fit the cluster but take all of its CPUs (2 workers x 1 CPU on 2 cores),
    the read tasks never start and the fit hangs; say so before starting it. (Workers that do
    not fit wait for an autoscaler, which adds CPUs for the reads too.)
    """
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    wanted = train.num_workers * train.cpus_per_worker
    if wanted <= total < wanted + 1:
        most = (total - 1) / train.num_workers
        hint = f"use at most {most:g}" if most > 0 else "give Ray at least 2 CPUs"
        raise ConfigError(
            "train.cpus_per_worker",
            f"{train.num_workers} workers x {train.cpus_per_worker} CPU leave less than one of "
            f"the cluster's {total:g} CPUs for Ray Data's read tasks and the run would hang; "
            f"{hint}",
        )


def _worker_env(train: TrainConfig) -> dict[str, str]:
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


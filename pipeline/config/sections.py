"""The config sections of the services (storage, tracking, Ray) and of training and evaluation.

Each is a frozen keyword-only dataclass checked in `__post_init__` (`ConfigError` naming the
field); `pipeline.configtools.build` fills one from a YAML mapping and prefixes its path. The
model section is `heat.models.Architecture` itself: the model's sizes are declared once, there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from heat.models import Architecture
from heat.validation import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_fraction,
    check_int,
)

ModelConfig = Architecture
"""The `model` section: sizes shared by every variant of a task (the attention is each
variant's)."""

_TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql",
                     "databricks", "file:")


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    root: str = "runs"
    """Stage outputs, Ray Train checkpoints and (by default) the MLflow store: a folder (made
    absolute against the current directory) or any pyarrow URI every node can reach (s3://...)."""

    def __post_init__(self) -> None:
        if not self.root.strip() or "\0" in self.root:
            raise ConfigError("root", f"must be a folder (created if missing) or a URI such as "
                                      f"s3://bucket/runs, got {self.root!r}")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    uri: str | None = None
    """MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite:///<storage root>/mlflow.db."""
    experiment: str | None = None
    """MLflow experiment; null: the config's name."""
    artifact_location: str | None = None
    """Where a new experiment keeps artifacts; null: <storage root>/mlartifacts for a local
    store (MLflow's default is ./mlruns of whatever directory the driver runs in), the
    server's choice for a tracking server."""

    def __post_init__(self) -> None:
        if self.uri is not None and not self.uri.startswith(_TRACKING_SCHEMES):
            raise ConfigError("uri", f"must be an MLflow tracking URI starting with one of "
                                     f"{', '.join(_TRACKING_SCHEMES)}; got {self.uri!r}")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    address: str = "local"
    """'local': a private Ray instance in this process; 'auto': the running cluster (`ray start`,
    `ray job submit`); 'ray://host:10001': a cluster through Ray Client."""
    num_cpus: int | None = None
    """CPUs of the local instance (default: this machine's); only with address local."""
    worker_niceness: int = 0
    """Niceness of the local instance's worker processes, the training ranks among them. Ray's
    own default is 15, which lets any other process (Ray's own services, a browser, a compile)
    preempt training on a busy machine; 0 shares the CPUs fairly. A cluster's workers run at
    what its `ray start` set (`RAY_worker_niceness`); only with address local."""

    def __post_init__(self) -> None:
        if self.address not in ("local", "auto") and not self.address.startswith("ray://"):
            raise ConfigError("address", f"must be local, auto or ray://HOST:PORT; got "
                                         f"{self.address!r}")
        if self.num_cpus is not None:
            check_int("num_cpus", self.num_cpus, 1)
            if self.address != "local":
                raise ConfigError("num_cpus", f"only applies to address local (a cluster has its "
                                              f"own CPUs); address is {self.address!r}")
        check_int("worker_niceness", self.worker_niceness, 0, 19)
        if self.worker_niceness != 0 and self.address != "local":
            raise ConfigError("worker_niceness", f"only applies to address local (a cluster's "
                                                 f"workers run at what its `ray start` set); "
                                                 f"address is {self.address!r}")

    def local_cpus(self) -> int:
        return self.num_cpus or os.cpu_count() or 1


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
    """Padded tokens per micro-batch and rank, counted as `batch_tokens` says. A micro-batch is
    one length bucket; each rank draws its own, so an optimizer step trains on num_workers x
    grad_accum_steps independent buckets. To change the workers at an equal global batch, trade
    them for grad_accum_steps, not for tokens_per_batch: one bucket twice as large is another
    batch (measured on the smoke translation task: about 5 BLEU worse)."""
    batch_tokens: Literal["sum", "max"] = "sum"
    """Translation: `sum` counts rows x (longest source + longest target); `max` counts rows x
    the longer of the two, fairseq's `--max-tokens` (twice the rows for the same budget)."""
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
        check_choice("batch_tokens", self.batch_tokens, ("sum", "max"))
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

    def budget_columns(self, task: str) -> int:
        """How many times the longest length one example takes of `tokens_per_batch`: 2 for
        translation counted as `sum` (source + target), else 1."""
        return 2 if task == "translation" and self.batch_tokens == "sum" else 1

    @property
    def torch_threads(self) -> int:
        return self.threads_per_worker or max(1, -int(-self.cpus_per_worker // 1))


def _check_range(field: str, value: Any, low: float, high: float) -> None:
    """A finite number in [low, high] (check_float's interval is open at the bottom)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ConfigError(field, f"must be a number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How the trained (best-validation) model of each variant is evaluated."""

    split: Literal["test", "validation"] = "test"
    """Split to score; GLUE's test labels are hidden, so its configs evaluate on validation."""
    max_examples: int = 0
    """Score only the first N rows of the split (0: all)."""
    batch_size: int = 64
    """Sentences per decoding batch (per rank); beam search multiplies it by beam_size."""
    beam_size: int = 4
    """Translation: beams per sentence; 1 is greedy decoding."""
    length_penalty: float = 0.6
    """Translation: GNMT length-penalty exponent alpha; 0 ranks hypotheses by raw log-prob."""
    max_length_ratio: float = 1.5
    """Translation: decode at most ratio x (longest source in the batch) + offset tokens ..."""
    max_length_offset: int = 10
    """... capped at the model's max_length."""

    def __post_init__(self) -> None:
        check_int("max_examples", self.max_examples, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("beam_size", self.beam_size, 1, 64)
        _check_range("length_penalty", self.length_penalty, 0.0, 10.0)
        _check_range("max_length_ratio", self.max_length_ratio, 0.0, 100.0)
        check_int("max_length_offset", self.max_length_offset, 0)
        if self.max_length_ratio == 0 and self.max_length_offset == 0:
            raise ConfigError("max_length_offset", "must be >= 1 when max_length_ratio is 0")

    def decode_length(self, longest_source: int, model_max_length: int) -> int:
        wanted = math.ceil(self.max_length_ratio * longest_source) + self.max_length_offset
        return max(1, min(model_max_length, wanted))

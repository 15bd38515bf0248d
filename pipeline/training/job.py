"""`TrainJob`: one typed description of training and evaluating a task's variants.

The pipeline's train and evaluate stages, `pipeline.job.train_and_evaluate` (what a Ray Tune
trial or a script calls) and the Ray Train workers all read the same job. It holds parsed,
typed values only (the variants' attention as `heat` specs), and it validates itself on
construction, so a bad job fails before Ray starts anything. No Ray, DeepSpeed or MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from heat.models import ClassifierConfig, Seq2SeqConfig
from heat.validation import ConfigError, check_choice, check_int
from pipeline import storage
from pipeline.config import EvalConfig, ModelConfig, TaskConfig, TrainConfig, Variant, model_config
from pipeline.training.outputs import BEST_CHECKPOINT_DIR

TASKS = ("translation", "classification")


@dataclass(frozen=True, kw_only=True)
class ChildRunPlan:
    """Where rank 0 opens each variant's MLflow child run when that variant's training starts
    (so the run's start time, and its Duration in the UI, are its own), and what it logs there
    first: the variant's params (nested; flattened for MLflow, and as `config.yaml`) and the
    tokenizer. A resumed fit reopens the run the killed attempt made."""

    experiment_id: str
    parent_run_id: str
    run_name: str
    """The pipeline run's name (the `heat.run_name` tag)."""
    task: str
    """The pipeline task's name (the `heat.task` tag)."""
    tags: dict[str, str]
    params: dict[str, dict[str, Any]]
    """Variant name -> its params."""
    seed: int | None = None
    """The repetition of a run with `seeds` these runs belong to (the `heat.seed` tag)."""


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """Everything one `train_and_evaluate` call needs; built by the train stage (or a Tune trial).

    Validated on construction: every variant's model config is built here, so an attention that
    does not fit the model or a bad size fails before Ray starts anything.
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
    """The SentencePiece model proto (vocabulary size, detokenization)."""
    storage_uri: str
    """RunConfig.storage_path: checkpoints, hypotheses and best weights go under it."""
    run_name: str
    """RunConfig.name: the same (storage_uri, run_name) resumes a killed run."""
    tracking_uri: str
    mlflow_run_ids: dict[str, str] = field(default_factory=dict)
    """Variant name -> its MLflow child run (`pipeline.tracking.PipelineTracker.child_runs`);
    a variant without one has its run opened by rank 0 from `child_runs`."""
    child_runs: ChildRunPlan | None = None
    num_labels: int | None = None
    """Classification: number of classes (labels 0 .. num_labels - 1)."""
    tracked: bool = True
    """False: nothing goes to MLflow (`heat-pipeline bench train` times bare training)."""

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        if not self.variants:
            raise ConfigError("variants", "at least one variant is required")
        names = [v.name for v in self.variants]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise ConfigError(f"variants.{duplicate}", "variant names must be unique")
        missing = [n for n in names if self.tracked and n not in self.mlflow_run_ids
                   and (self.child_runs is None or n not in self.child_runs.params)]
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

    @classmethod
    def for_task(cls, task: TaskConfig, *, data_uri: str, tokenizer_model: bytes, train_uri: str,
                 tracking_uri: str, mlflow_run_ids: dict[str, str] | None = None,
                 child_runs: ChildRunPlan | None = None, tracked: bool = True) -> TrainJob:
        """The job of a pipeline task whose Ray Train run lives at `train_uri`
        (`<storage_uri>/<run_name>`, the train stage's folder)."""
        storage_uri, _, run_name = train_uri.rstrip("/").rpartition("/")
        return cls(
            task=task.kind, variants=list(task.variants), model=task.model, train=task.train,
            eval=task.eval, data_uri=data_uri, tokenizer_model=tokenizer_model,
            storage_uri=storage_uri, run_name=run_name, tracking_uri=tracking_uri,
            mlflow_run_ids=mlflow_run_ids or {}, child_runs=child_runs,
            num_labels=task.data.num_labels if task.kind == "classification" else None,
            tracked=tracked,
        )

    def _check_budget(self) -> None:
        columns = self.train.budget_columns(self.task)
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
            return model_config(self.task, self.model, variant.attention,
                                vocab_size=self.vocab_size, num_labels=self.num_labels)
        except ConfigError as error:
            raise error.within(f"variants.{variant.name}") from None

    def result_uri(self, variant: str) -> str:
        """Folder of a variant's best weights and loss curve (beside Ray's checkpoints)."""
        return storage.join(self.storage_uri, self.run_name, "results", variant)

    def checkpoint_uri(self, variant: str) -> str:
        """The variant's best-validation weights: model.pt and model_config.json."""
        return storage.join(self.result_uri(variant), BEST_CHECKPOINT_DIR)

    def split_uri(self, split: str) -> str:
        """A tokenized split's Parquet folder."""
        return storage.join(self.data_uri, f"{split}.parquet")

"""Train-stage configs, the job's validation, the LR schedule and DeepSpeed's config (no Ray)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from heat.validation import ConfigError
from pipeline.configtools import build
from pipeline.config import EvalConfig, ModelConfig, TrainConfig, Variant
from pipeline.job import TrainJob
from pipeline.training.engine import WarmupDecay, deepspeed_config
from pipeline.training.state import Progress, VariantState
from toy_tasks import train_sentencepiece

TINY = {"d_model": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
        "ffn_dim": 64, "max_length": 32}
TRAIN = {"max_steps": 100, "warmup_steps": 10, "tokens_per_batch": 256}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"d_model": 30, "num_heads": 4}, "model.d_model"),
        ({"num_heads": 0}, "model.num_heads"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"label_smoothing": -0.1}, "model.label_smoothing"),
        ({"pooling": "max"}, "model.pooling"),
        ({"max_length": 1}, "model.max_length"),
        ({"norm_first": "yes"}, "model.norm_first"),
        ({"layers": 2}, "model.layers"),
    ],
)
def test_bad_model_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as error:
        build(ModelConfig, raw, "model")
    assert str(error.value).startswith(key + ":")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"zero_stage": 3}, "train.zero_stage"),
        ({"precision": "fp8"}, "train.precision"),
        ({"precision": "fp16"}, "train.precision"),  # fp16 without a GPU
        ({"lr": 0}, "train.lr"),
        ({"betas": [0.9]}, "train.betas"),
        ({"betas": [0.9, 1.0]}, "train.betas[1]"),
        ({"schedule": "step"}, "train.schedule"),
        ({"max_steps": 0}, "train.max_steps"),
        ({"warmup_steps": 100, "max_steps": 100}, "train.warmup_steps"),
        ({"grad_clip": -1}, "train.grad_clip"),
        ({"tokens_per_batch": 0}, "train.tokens_per_batch"),
        ({"num_workers": 0}, "train.num_workers"),
        ({"cpus_per_worker": 0}, "train.cpus_per_worker"),
        ({"early_stopping_patience": -1}, "train.early_stopping_patience"),
        ({"max_step": 10}, "train.max_step"),
    ],
)
def test_bad_train_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as error:
        build(TrainConfig, raw, "train")
    assert str(error.value).startswith(key + ":")


def test_defaults_build_and_threads_follow_cpus():
    config = build(TrainConfig, {}, "train")
    assert config.torch_threads == 1
    assert build(TrainConfig, {"cpus_per_worker": 1.5}, "train").torch_threads == 2
    assert build(TrainConfig, {"threads_per_worker": 3}, "train").torch_threads == 3
    build(ModelConfig, {}, "model")


@pytest.fixture(scope="module")
def proto() -> bytes:
    return train_sentencepiece(["alpha beta gamma delta"] * 4, vocab_size=8)


def make_job(proto: bytes, **changes) -> TrainJob:
    """A job; `variants` given as (name, attention as plain values) pairs, parsed here."""
    task = changes.get("task", "translation")
    if "variants" in changes:
        changes["variants"] = [Variant.parse(name, attention, task)
                               for name, attention in changes["variants"]]
    fields = dict(
        task="translation",
        variants=[Variant.parse("softmax", {"encoder_self": {"name": "softmax"}}, "translation")],
        model=ModelConfig(**TINY), train=TrainConfig(**TRAIN), eval=EvalConfig(),
        data_uri="/nowhere", tokenizer_model=proto, storage_uri="/nowhere", run_name="r",
        tracking_uri="sqlite:///nowhere.db", mlflow_run_ids={"softmax": "id"},
    )
    fields.update(changes)
    return TrainJob(**fields)


def test_a_valid_job_knows_its_vocabulary(proto):
    job = make_job(proto)
    assert job.vocab_size == 8
    assert job.model_config(job.variants[0]).vocab_size == 8
    assert job.result_uri("softmax") == "/nowhere/r/results/softmax"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"task": "summarization"}, "task"),
        ({"variants": []}, "variants"),
        ({"mlflow_run_ids": {}}, "mlflow_run_ids"),
        ({"variants": [("a", {}), ("a", {})], "mlflow_run_ids": {"a": "x"}}, "variants.a"),
        ({"variants": [("h", {"encoder_self": {"name": "heat", "rank": 99}})],
          "mlflow_run_ids": {"h": "x"}}, "variants.h.attention.encoder_self"),
        ({"variants": [("l", {"cross": {"name": "linformer", "rank": 8, "max_length": 16}})],
          "mlflow_run_ids": {"l": "x"}}, "variants.l.attention.cross.max_length"),
        ({"variants": [("u", {"middle": {"name": "softmax"}})],
          "mlflow_run_ids": {"u": "x"}}, "variants.u.attention.middle"),
        ({"train": TrainConfig(**{**TRAIN, "tokens_per_batch": 63})}, "train.tokens_per_batch"),
        ({"task": "classification", "num_labels": 1, "variants": [("s", {"name": "softmax"})],
          "mlflow_run_ids": {"s": "x"}}, "num_labels"),
        ({"tokenizer_model": b"not a model"}, "tokenizer_model"),
    ],
)
def test_bad_job_names_the_key(proto, changes, key):
    with pytest.raises(ConfigError) as error:
        make_job(proto, **changes)
    assert str(error.value).startswith(key)


def test_variant_names_must_be_usable_as_folder_names():
    with pytest.raises(ConfigError, match="variant name"):
        Variant.parse("../up", {}, "translation")


def test_classification_job_takes_one_spec_per_variant(proto):
    job = make_job(proto, task="classification", num_labels=3,
                   variants=[("t", {"name": "taylor", "order": 2})],
                   mlflow_run_ids={"t": "x"}, train=TrainConfig(**{**TRAIN,
                                                                   "tokens_per_batch": 32}))
    config = job.model_config(job.variants[0])
    assert config.num_classes == 3 and config.attention_spec.name == "taylor"


@pytest.mark.parametrize("schedule", ["linear", "cosine", "inverse_sqrt", "constant"])
def test_schedules_warm_up_linearly_to_the_peak(schedule):
    factor = WarmupDecay(schedule, warmup_steps=10, max_steps=110)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0, abs=0.05)  # decay starts after the peak
    assert 0.0 <= factor(109) <= 1.0


def test_schedule_decay_shapes():
    assert WarmupDecay("linear", 10, 110)(60) == pytest.approx(0.5)
    assert WarmupDecay("linear", 10, 110)(110) == pytest.approx(0.0)
    assert WarmupDecay("cosine", 10, 110)(60) == pytest.approx(0.5)
    assert WarmupDecay("inverse_sqrt", 16, 1000)(63) == pytest.approx(math.sqrt(16 / 64))
    assert WarmupDecay("constant", 0, 10)(9) == 1.0


def test_deepspeed_config_follows_the_train_config():
    config = deepspeed_config(TrainConfig(**TRAIN, zero_stage=1, precision="bf16",
                                          grad_accum_steps=4, grad_clip=0.5))
    assert config["zero_optimization"] == {"stage": 1}
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5


def test_progress_round_trips_through_json():
    state = VariantState("heat", world_size=2, step=40, best_val_loss=1.5, tokens=1000)
    progress = Progress(finished={"softmax": {"bleu": 12.5, "steps": 100}}, current=state)
    again = Progress.from_json(progress.to_json())
    assert again.finished == progress.finished
    assert dataclasses.asdict(again.current) == dataclasses.asdict(state)
    assert Progress.from_json(Progress().to_json()).current is None


def test_early_stopping_counts_validations_without_a_new_best():
    state = VariantState("v", world_size=1)
    losses = [3.0, 2.0, 2.5, 1.5, 1.6, 1.7]
    improved = []
    for step, loss in enumerate(losses, start=1):
        state.step = step * 10
        improved.append(state.record_validation(loss, patience=2))
    assert improved == [True, True, False, True, False, False]
    assert (state.best_val_loss, state.best_step) == (1.5, 40)
    assert state.stopped_early


def test_patience_zero_never_stops():
    state = VariantState("v", world_size=1)
    for loss in [1.0] + [2.0] * 20:
        state.record_validation(loss, patience=0)
    assert not state.stopped_early and state.validations_without_improvement == 20

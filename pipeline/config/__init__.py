"""The pipeline config: one YAML file -> typed, validated sections, before any work starts.

This package is the ground floor: it owns every section (`sections`: storage, tracking, ray,
train, eval, and model = `heat.models.Architecture`; `data`: data and tokenizer; `variants`) and
imports no stage, no Ray and no MLflow. Stages import their sections from here.

Layout (`configs/smoke.yaml` is the worked example):

    name: smoke                    # names runs, folders and the MLflow experiment
    storage: {root: runs}          # stage outputs, checkpoints, default MLflow store
    tracking: {uri: null}          # MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db
    ray: {address: local, num_cpus: 2}
    variants:                      # label -> attention, trained on every task
      softmax: {name: softmax}     # one spec: the same at every site
      heat: {name: heat, rank: 8}
      linformer:                   # per site (translation); classification uses encoder_self
        encoder_self: {name: linformer, rank: 32, max_length: 64}
        cross: {name: linformer, rank: 32, max_length: 64}
    defaults:                      # merged under every task; a task's own keys win
      train: {num_workers: 2, precision: bf16}
    tasks:
      translation:
        data: {task: translation, source: builtin, builtin: toy_translation}
        tokenizer: smoke_joint     # tokenizers/smoke_joint.yaml, or an inline mapping
        model: {d_model: 64}
        train: {max_steps: 300}
        eval: {beam_size: 4}
        variants: [softmax, heat]  # optional subset (default: all)

Everything a run could trip over is checked here, so a bad config costs nothing: unknown keys,
types and ranges (per section, `pipeline.configtools`), every variant's attention against every
task's model (`heat.models`), local data files and their schema, the tokenizer spec, the token
budget against the model's length, Ray's CPUs against the training workers. Every failure is one
`ConfigError` naming the dotted key, the value and what is allowed.
"""

from pipeline.config.data import DataConfig, TokenizerSpec, load_tokenizer_spec, spec_names
from pipeline.config.loader import (
    CONFIG_DIR,
    TASK_SECTIONS,
    PipelineConfig,
    TaskConfig,
    build_config,
    load_config,
    packaged_config,
)
from pipeline.config.sections import (
    EvalConfig,
    ModelConfig,
    RayConfig,
    StorageConfig,
    TrackingConfig,
    TrainConfig,
)
from pipeline.config.variants import Variant, VariantAttention, model_config

__all__ = [
    "CONFIG_DIR", "TASK_SECTIONS", "DataConfig", "EvalConfig", "ModelConfig", "PipelineConfig",
    "RayConfig", "StorageConfig", "TaskConfig", "TokenizerSpec", "TrackingConfig", "TrainConfig",
    "Variant", "VariantAttention", "build_config", "load_config", "load_tokenizer_spec",
    "model_config", "packaged_config", "spec_names",
]

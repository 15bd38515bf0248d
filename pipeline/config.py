"""The pipeline config: one YAML file -> typed, validated sections, before any work starts.

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

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heat.attention import SpecError, spec_from_dict
from heat.models import SITES, AttentionSites
from heat.validation import ConfigError, check_int
from pipeline.configtools import apply_overrides, build, load_yaml
from pipeline.data import storage
from pipeline.stages.evaluate import EvalConfig
from pipeline.stages.prepare import DataConfig, check_source
from pipeline.stages.tokenize import TokenizerSpec, load_tokenizer_spec
from pipeline.stages.train import ModelConfig, TrainConfig, Variant

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The project's configs/ folder, beside this package in a source checkout or editable install."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TASK_KEYS = ("data", "tokenizer", "model", "train", "eval", "variants")
_TOP_KEYS = ("name", "description", "storage", "tracking", "ray", "variants", "defaults", "tasks")
_TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql",
                     "databricks", "file:")


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    root: str = "runs"
    """Stage outputs, Ray Train checkpoints and (by default) the MLflow store: a folder (made
    absolute against the current directory) or any pyarrow URI every node can reach (s3://...)."""


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

    def __post_init__(self) -> None:
        if self.address not in ("local", "auto") and not self.address.startswith("ray://"):
            raise ConfigError("address", f"must be local, auto or ray://HOST:PORT; got "
                                         f"{self.address!r}")
        if self.num_cpus is not None:
            check_int("num_cpus", self.num_cpus, 1)
            if self.address != "local":
                raise ConfigError("num_cpus", f"only applies to address local (a cluster has its "
                                              f"own CPUs); address is {self.address!r}")

    def local_cpus(self) -> int:
        return self.num_cpus or os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """One task (a data set) and the sections that train every variant on it."""

    name: str
    data: DataConfig
    tokenizer: TokenizerSpec
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    variants: tuple[Variant, ...]
    """The attention of each variant in the form this task's model takes (sites or one spec)."""

    @property
    def kind(self) -> str:
        return self.data.task


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    name: str
    description: str
    storage: StorageConfig
    tracking: TrackingConfig
    """Resolved: `uri`, `experiment` and `artifact_location` are filled in."""
    ray: RayConfig
    variants: dict[str, dict[str, Any]]
    """Variant label -> attention as written (one spec, or site -> spec)."""
    tasks: dict[str, TaskConfig]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (defaults filled in, paths absolute): printed and tracked."""
        tasks = {}
        for name, task in self.tasks.items():
            sections = {key: dataclasses.asdict(getattr(task, key))
                        for key in ("data", "tokenizer", "model", "train", "eval")}
            tasks[name] = {**sections, "variants": [v.name for v in task.variants]}
        return {
            "name": self.name, "description": self.description,
            "storage": dataclasses.asdict(self.storage),
            "tracking": dataclasses.asdict(self.tracking),
            "ray": dataclasses.asdict(self.ray),
            "variants": self.variants, "tasks": tasks,
        }


# ---------------------------------------------------------------------------------------------
# Loading


def packaged_config(name: str) -> str:
    """The path of `configs/<name>.yaml` shipped with the project, from any working directory."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("config", f"{path} not found: the packaged configs live in the "
                                    f"project's configs/ folder; install the project from a "
                                    f"checkout (pip install -e .) or pass a config path")
    return str(path)


def load_config(path: str, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read `path`, apply dotted overrides, validate everything; ConfigError on any problem."""
    raw = apply_overrides(load_yaml(path), list(overrides))
    return build_config(raw)


def build_config(raw: Mapping[str, Any]) -> PipelineConfig:
    """A PipelineConfig from a mapping in the layout of this module's docstring."""
    _check_keys("", raw, _TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError("name", f"must be a name matching {_NAME.pattern} (it names runs and "
                                  f"folders), got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", f"must be a string, got {description!r}")
    storage_config = build(StorageConfig, raw.get("storage"), "storage")
    storage_config = StorageConfig(root=storage.resolve(storage_config.root))
    ray_config = build(RayConfig, raw.get("ray"), "ray")
    variants = _variants(raw.get("variants"))
    tasks = _tasks(raw.get("tasks"), raw.get("defaults"), variants)
    for task in tasks.values():
        _check_resources(task, ray_config)
    return PipelineConfig(
        name=name, description=description, storage=storage_config,
        tracking=_tracking(build(TrackingConfig, raw.get("tracking"), "tracking"), name,
                           storage_config.root),
        ray=ray_config, variants=variants, tasks=tasks,
    )


def _check_keys(path: str, raw: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "config", f"must be a mapping with keys {', '.join(allowed)}, "
                                            f"got {raw!r}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(key, f"unknown key; allowed keys: {', '.join(allowed)}")


def _tracking(config: TrackingConfig, name: str, root: str) -> TrackingConfig:
    """Fill in the tracking URI, the experiment and, for a local store, the artifact location."""
    uri = config.uri or os.environ.get("MLFLOW_TRACKING_URI")
    local_root = None if "://" in root and not root.startswith("file://") else \
        root.removeprefix("file://")
    if uri is None:
        if local_root is None:
            raise ConfigError("tracking.uri", f"is required when storage.root is remote "
                                              f"({root}): set it or MLFLOW_TRACKING_URI to a "
                                              f"tracking server, e.g. http://head-node:5000")
        uri = f"sqlite:///{local_root}/mlflow.db"
    artifacts = config.artifact_location
    if artifacts is None and not uri.startswith(("http://", "https://", "databricks")):
        artifacts = storage.join(root, "mlartifacts")
    return TrackingConfig(uri=uri, experiment=config.experiment or name,
                          artifact_location=artifacts)


# ---------------------------------------------------------------------------------------------
# Variants


def _variants(raw: Any) -> dict[str, dict[str, Any]]:
    """Check the variants mapping's shape and every spec in it (names, parameters, ranges)."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("variants", f"must be a non-empty mapping of variant label -> "
                                      f"attention spec, got {raw!r}")
    variants = {}
    for label, attention in raw.items():
        key = f"variants.{label}"
        if not isinstance(label, str) or not _NAME.fullmatch(label):
            raise ConfigError(key, f"a variant label must match {_NAME.pattern} (it names "
                                   f"folders and MLflow runs)")
        if not isinstance(attention, Mapping):
            raise ConfigError(key, f"must be an attention spec such as {{name: heat, rank: 8}} "
                                   f"or a mapping of site ({', '.join(SITES)}) -> spec, got "
                                   f"{attention!r}")
        sites = _as_sites(key, attention)
        if _is_single_spec(attention):
            _check_spec(key, attention)
        else:
            for site, spec in sites.items():
                _check_spec(f"{key}.{site}", spec)
        try:
            AttentionSites.from_dict(sites)  # combinations: e.g. a site the variant cannot serve
        except ConfigError as error:
            raise ConfigError(f"{key}.{error.field.removeprefix('attention.')}",
                              str(error).split(": ", 1)[1]) from None
        variants[label] = dict(attention)
    return variants


def _check_spec(key: str, spec: Any) -> None:
    """One attention spec; errors keyed by the parameter ('variants.heat.rank')."""
    try:
        spec_from_dict(spec)
    except SpecError as error:  # fields are 'attention.name', 'heat.rank' or 'attention'
        parameter = error.field.split(".", 1)[1] if "." in error.field else ""
        raise ConfigError(f"{key}.{parameter}" if parameter else key,
                          str(error).split(": ", 1)[1]) from None


def _is_single_spec(attention: Mapping[str, Any]) -> bool:
    return "name" in attention


def _as_sites(key: str, attention: Mapping[str, Any]) -> dict[str, Any]:
    """The site -> spec form of a variant; one spec means that spec at every site."""
    if _is_single_spec(attention):
        return {site: dict(attention) for site in SITES}
    unknown = sorted(set(attention) - set(SITES))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown attention site; a variant is one spec "
                                                  f"(with a 'name' key) or a mapping of site -> "
                                                  f"spec with sites {', '.join(SITES)}")
    return dict(attention)


def _task_attention(label: str, attention: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A variant's attention as a task's model takes it: sites (translation) or one spec."""
    if kind == "translation":
        return _as_sites(f"variants.{label}", attention)
    if _is_single_spec(attention):
        return dict(attention)
    if "encoder_self" not in attention:
        raise ConfigError(f"variants.{label}", "a classification task uses a variant's "
                                               "encoder_self spec, and this one has none")
    return dict(attention["encoder_self"])


# ---------------------------------------------------------------------------------------------
# Tasks


def _tasks(raw: Any, defaults: Any, variants: dict[str, dict[str, Any]]) -> dict[str, TaskConfig]:
    if defaults is not None:
        _check_keys("defaults", defaults, _TASK_KEYS)
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("tasks", f"must be a non-empty mapping of task name -> sections "
                                   f"({', '.join(_TASK_KEYS)}), got {raw!r}")
    tasks = {}
    for name, task_raw in raw.items():
        path = f"tasks.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(path, f"a task name must match {_NAME.pattern}")
        if task_raw is None:  # disabled, e.g. `heat-pipeline smoke tasks.classification=null`
            continue
        _check_keys(path, task_raw, _TASK_KEYS)
        tasks[name] = _task(name, _merge(defaults or {}, task_raw), variants)
    if not tasks:
        raise ConfigError("tasks", f"every task is disabled (null): {', '.join(map(str, raw))}")
    return tasks


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, mappings merged key by key (lists and scalars replaced)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _task(name: str, raw: dict[str, Any], variants: dict[str, dict[str, Any]]) -> TaskConfig:
    path = f"tasks.{name}"
    for key in ("data", "tokenizer"):
        if key not in raw:
            raise ConfigError(f"{path}.{key}", "is required")
    data = build(DataConfig, raw["data"], f"{path}.data")
    try:
        check_source(data)  # files exist, first rows fit the schema, the hub answers
    except ConfigError as error:
        raise in_task(name, error) from None
    task = TaskConfig(
        name=name, data=data,
        tokenizer=_tokenizer(name, raw["tokenizer"]),
        model=build(ModelConfig, raw.get("model"), f"{path}.model"),
        train=build(TrainConfig, raw.get("train"), f"{path}.train"),
        eval=build(EvalConfig, raw.get("eval"), f"{path}.eval"),
        variants=tuple(
            Variant(name=label, attention=_task_attention(label, variants[label], data.task))
            for label in _selected_variants(f"{path}.variants", raw.get("variants"), variants)
        ),
    )
    _check_models(path, task)
    _check_token_budget(path, task)
    return task


def _tokenizer(name: str, raw: Any) -> TokenizerSpec:
    try:
        return load_tokenizer_spec(raw)
    except ConfigError as error:
        raise in_task(name, error) from None


def in_task(task: str, error: ConfigError) -> ConfigError:
    """A section-relative error ("data.files.train: ...") as the full key of task `task`."""
    return ConfigError(f"tasks.{task}.{error.field}", str(error).split(": ", 1)[1])


def _selected_variants(key: str, raw: Any, variants: dict[str, dict[str, Any]]) -> list[str]:
    if raw is None:
        return list(variants)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(key, f"must be a non-empty list of variant labels, got {raw!r}")
    for label in raw:
        if label not in variants:
            raise ConfigError(key, f"unknown variant {label!r}; defined in variants: "
                                   f"{', '.join(variants)}")
    if len(set(raw)) != len(raw):
        raise ConfigError(key, f"lists a variant twice: {raw!r}")
    return list(raw)


def _check_models(path: str, task: TaskConfig) -> None:
    """Build every variant's heat.models config: the attention must fit this task's model
    (Linformer's max_length, cross-attention support, sizes)."""
    for variant in task.variants:
        try:
            if task.kind == "translation":
                task.model.seq2seq(task.tokenizer.vocab_size,
                                   AttentionSites.from_dict(variant.attention))
            else:
                task.model.classifier(task.tokenizer.vocab_size, task.data.num_labels,
                                      spec_from_dict(variant.attention))
        except (ConfigError, SpecError) as error:
            message = str(error).split(": ", 1)[1]
            if "attention" in error.field:  # the variant's spec does not fit this model
                site = error.field.split("attention", 1)[1].lstrip("_spec").lstrip(".")
                key = f"variants.{variant.name}" + (f".{site}" if site else "")
                raise ConfigError(key, f"{message} (in task {task.name})") from None
            field_name = error.field.rsplit(".", 1)[-1]
            raise ConfigError(f"{path}.model.{field_name}", message) from None


def _check_token_budget(path: str, task: TaskConfig) -> None:
    """The longest example must fit one batch, or batching could never place it."""
    columns = 2 if task.kind == "translation" else 1
    needed = columns * task.model.max_length
    if task.train.tokens_per_batch < needed:
        raise ConfigError(f"{path}.train.tokens_per_batch",
                          f"must be >= {needed} ({columns} x model.max_length="
                          f"{task.model.max_length}) so the longest example fits a batch, got "
                          f"{task.train.tokens_per_batch}")


def _check_resources(task: TaskConfig, ray: RayConfig) -> None:
    """A local Ray instance must hold the training workers' CPUs plus one for Ray Data's read
    tasks (and the GPUs asked for), or the fit waits forever for resources that never come."""
    if ray.address != "local":
        return
    path = f"tasks.{task.name}.train"
    wanted = task.train.num_workers * task.train.cpus_per_worker
    if wanted + 1 > ray.local_cpus():
        raise ConfigError(f"{path}.cpus_per_worker",
                          f"{task.train.num_workers} workers x cpus_per_worker="
                          f"{task.train.cpus_per_worker} need {wanted:g} CPUs plus one for Ray "
                          f"Data, but the local Ray instance has ray.num_cpus="
                          f"{ray.local_cpus()}; use at most "
                          f"{(ray.local_cpus() - 1) / task.train.num_workers:g} per worker "
                          f"(threads_per_worker sets the torch threads independently)")
    if task.train.use_gpu:
        import torch

        if torch.cuda.device_count() < task.train.num_workers:
            raise ConfigError(f"{path}.use_gpu", f"{task.train.num_workers} GPU workers asked, "
                                                 f"this machine has "
                                                 f"{torch.cuda.device_count()} CUDA devices")

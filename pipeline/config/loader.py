"""Loading a pipeline config: YAML and overrides -> `PipelineConfig`, every cross-section check.

The layout and what is checked are in the package docstring (`pipeline.config`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heat.validation import ConfigError
from pipeline import storage
from pipeline.config.data import DataConfig, TokenizerSpec, load_tokenizer_spec
from pipeline.config.job import check_job_paths, job_ray_section
from pipeline.config.sections import (
    EvalConfig,
    ModelConfig,
    RayConfig,
    StorageConfig,
    TrackingConfig,
    TrainConfig,
)
from pipeline.config.variants import (
    NAME,
    Variant,
    VariantAttention,
    check_devices,
    fit_error,
    model_config,
    parse_variants,
)
from pipeline.configtools import apply_overrides, build, load_yaml
from pipeline.data.sources import check_source

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The project's configs/ folder, beside this package in a source checkout or editable install."""

TASK_SECTIONS: dict[str, type] = {
    "data": DataConfig, "tokenizer": TokenizerSpec, "model": ModelConfig, "train": TrainConfig,
    "eval": EvalConfig,
}
"""A task's typed sections by key; with its `variants` list they are all a task holds."""
_TASK_KEYS = (*TASK_SECTIONS, "variants")
_TOP_KEYS = ("name", "description", "storage", "tracking", "ray", "seeds", "variants", "defaults",
             "tasks")


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

    def sections(self, *keys: str) -> dict[str, dict[str, Any]]:
        """The named sections (default: all) as plain values, for hashing and tracking."""
        return {key: dataclasses.asdict(getattr(self, key)) for key in keys or TASK_SECTIONS}

    def model_config(self, variant: Variant, vocab_size: int):
        """The `heat.models` config of one of this task's variants."""
        return model_config(self.kind, self.model, variant.attention, vocab_size=vocab_size,
                            num_labels=self.data.num_labels)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    name: str
    description: str
    storage: StorageConfig
    """Resolved: `root` is absolute (or a URI)."""
    tracking: TrackingConfig
    """Resolved: `uri`, `experiment` and `artifact_location` are filled in."""
    ray: RayConfig
    variants: dict[str, VariantAttention]
    tasks: dict[str, TaskConfig]
    seeds: tuple[int, ...] | None = None
    """Train and evaluate every task once per seed (as its `train.seed`), child runs per seed
    and the summary's scores as mean and spread (`pipeline.seeds`); None: once, at each task's
    own `train.seed`."""

    def seeded(self, task: TaskConfig) -> list[tuple[int | None, TaskConfig]]:
        """(seed, the task trained at it) per repetition; [(None, task)] without `seeds`."""
        if self.seeds is None:
            return [(None, task)]
        return [(seed, dataclasses.replace(task, train=dataclasses.replace(task.train, seed=seed)))
                for seed in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (defaults filled in, paths absolute): printed and tracked."""
        tasks = {name: {**task.sections(), "variants": [v.name for v in task.variants]}
                 for name, task in self.tasks.items()}
        return {
            "name": self.name, "description": self.description,
            "storage": dataclasses.asdict(self.storage),
            "tracking": dataclasses.asdict(self.tracking),
            "ray": dataclasses.asdict(self.ray),
            **({"seeds": list(self.seeds)} if self.seeds is not None else {}),
            "variants": {label: v.to_dict() for label, v in self.variants.items()},
            "tasks": tasks,
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
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError("name", f"must be a name matching {NAME.pattern} (it names runs and "
                                  f"folders), got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", f"must be a string, got {description!r}")
    storage_config = build(StorageConfig, raw.get("storage"), "storage")
    check_job_paths(storage_config.root, raw.get("tracking"))
    storage_config = StorageConfig(root=storage.resolve(storage_config.root))
    _check_storage_root(storage_config.root)
    ray_config = build(RayConfig, job_ray_section(raw.get("ray")), "ray")
    variants = parse_variants(raw.get("variants"))
    tasks = _tasks(raw.get("tasks"), raw.get("defaults"), variants)
    for task in tasks.values():
        _check_resources(task, ray_config)
    return PipelineConfig(
        name=name, description=description, storage=storage_config,
        tracking=_tracking(build(TrackingConfig, raw.get("tracking"), "tracking"), name,
                           storage_config.root),
        ray=ray_config, variants=variants, tasks=tasks, seeds=_seeds(raw.get("seeds")),
    )


def _seeds(raw: Any) -> tuple[int, ...] | None:
    """The `seeds` key: absent or null, or a non-empty list of distinct non-negative ints."""
    if raw is None:
        return None
    if (not isinstance(raw, list) or not raw or len(set(map(repr, raw))) != len(raw)
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in raw)):
        raise ConfigError("seeds", f"must be a non-empty list of distinct non-negative integers "
                                   f"(train.seed of each repetition), got {raw!r}")
    return tuple(raw)


def _check_keys(path: str, raw: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "config", f"must be a mapping with keys {', '.join(allowed)}, "
                                            f"got {raw!r}")
    unknown = sorted(set(raw) - set(allowed), key=str)
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        hint = ("; base and tune belong in a search config: run it with `heat-pipeline tune`"
                if not path and unknown[0] in ("base", "tune") else "")
        raise ConfigError(key, f"unknown key; allowed keys: {', '.join(allowed)}{hint}")


def _check_storage_root(root: str) -> None:
    """A local root must be a folder, or a path whose nearest existing ancestor is a folder (the
    run creates the rest); a remote root is checked when it is first written."""
    local = storage.local_path(root)
    if local is None:
        return
    for folder in (Path(local), *Path(local).parents):
        if os.path.islink(folder) and not folder.exists():
            raise ConfigError("storage.root", f"{folder} is a broken symbolic link; expected a "
                                              f"folder (or a path where one can be created)")
        if not folder.exists():
            continue
        if not folder.is_dir():
            where = "is" if str(folder) == local else f"lies under {folder}, which is"
            raise ConfigError("storage.root", f"{local} {where} a file, not a folder; expected "
                                              f"a folder (created if missing) or a URI")
        return


def _tracking(config: TrackingConfig, name: str, root: str) -> TrackingConfig:
    """Fill in the tracking URI, the experiment and, for a local store, the artifact location."""
    uri = config.uri or os.environ.get("MLFLOW_TRACKING_URI")
    local_root = storage.local_path(root)
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
# Tasks


def _tasks(raw: Any, defaults: Any, variants: dict[str, VariantAttention]
           ) -> dict[str, TaskConfig]:
    if defaults is not None:
        _check_keys("defaults", defaults, _TASK_KEYS)
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("tasks", f"must be a non-empty mapping of task name -> sections "
                                   f"({', '.join(_TASK_KEYS)}), got {raw!r}")
    tasks = {}
    for name, task_raw in raw.items():
        path = f"tasks.{name}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(path, f"a task name must match {NAME.pattern}")
        if task_raw is None:  # disabled, e.g. `heat-pipeline smoke tasks.classification=null`
            continue
        _check_keys(path, task_raw, _TASK_KEYS)
        tasks[name] = _task(name, merge_mappings(defaults or {}, task_raw), variants)
    if not tasks:
        raise ConfigError("tasks", f"every task is disabled (null): {', '.join(map(str, raw))}")
    return tasks


def merge_mappings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, mappings merged key by key (lists and scalars replaced)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _task(name: str, raw: dict[str, Any], variants: dict[str, VariantAttention]) -> TaskConfig:
    path = f"tasks.{name}"
    for key in ("data", "tokenizer"):
        if key not in raw:
            raise ConfigError(f"{path}.{key}", "is required")
    data = build(DataConfig, raw["data"], f"{path}.data")
    try:
        check_source(data)  # files exist, first rows fit the schema, the hub answers
    except ConfigError as error:
        raise error.within(f"tasks.{name}") from None
    task = TaskConfig(
        name=name, data=data,
        tokenizer=_tokenizer(name, raw["tokenizer"]),
        model=build(ModelConfig, raw.get("model"), f"{path}.model"),
        train=build(TrainConfig, raw.get("train"), f"{path}.train"),
        eval=build(EvalConfig, raw.get("eval"), f"{path}.eval"),
        variants=tuple(
            Variant(name=label, attention=variants[label].for_task(data.task))
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
        raise error.within(f"tasks.{name}") from None


def _selected_variants(key: str, raw: Any, variants: dict[str, VariantAttention]) -> list[str]:
    if raw is None:
        return list(variants)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(key, f"must be a non-empty list of variant labels, got {raw!r}")
    for label in raw:
        if not isinstance(label, str) or label not in variants:
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
            task.model_config(variant, task.tokenizer.vocab_size)
        except ConfigError as error:
            keyed = fit_error(variant.name, error)
            if keyed is error:
                raise error.within(f"{path}.model") from None
            raise ConfigError(keyed.field, f"{keyed.message} (in task {task.name})") from None
        try:
            check_devices(variant, task.kind, task.train.use_gpu)
        except ConfigError as error:
            raise ConfigError(error.field, f"{error.message} (in task {task.name}, "
                                           f"train.use_gpu={task.train.use_gpu})") from None


def _check_token_budget(path: str, task: TaskConfig) -> None:
    """The longest example must fit one batch, or batching could never place it."""
    columns = task.train.budget_columns(task.kind)
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

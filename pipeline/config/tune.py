"""A search config: a pipeline config (its tasks, data, model and training) plus a `tune` section
saying which variant's parameters to search, over which values, with which scheduler.

    name: tune_smoke
    base: smoke                    # configs/smoke.yaml (or a path beside this file) beneath
    defaults: {train: {max_steps: 200, val_every: 50, checkpoint_every: 50}}
    tune:
      scheduler: {type: asha, grace_period: 100, reduction_factor: 2}
      max_concurrent_trials: null  # default: as many as the cluster's CPUs and GPUs hold
      searches:
        heat_rank:
          task: translation
          variant: heat            # a variant of the task; its attention is the starting point
          grid: {rank: [2, 4, 8, 16], basis: [svd, taylor]}
          seeds: [0, 1]            # every grid point once per seed (train.seed)
          lr: {loguniform: [1.0e-3, 1.0e-2]}   # optional: a list (grid) or a log-uniform range
          algorithm: grid          # grid; or optuna (grid values become choices, num_samples)
          scheduler: {type: fifo}  # optional: this search's own (every rank runs to the end)

A grid key is an attention parameter (`rank`, `basis`, `order`, `feature_dim`, `landmarks`, ...):
it is set at every site of the variant whose spec has that parameter. Every combination is
parsed and fitted to the task's model here, so a bad value fails before Ray starts. Each trial
trains and evaluates one (task, variant, parameters) through `pipeline.job.train_and_evaluate`;
ASHA compares the latest validation loss at each checkpoint (`train.checkpoint_every` steps).
No Ray here.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from heat.validation import ConfigError, check_float, check_int
from pipeline.config.loader import (
    CONFIG_DIR,
    PipelineConfig,
    TaskConfig,
    merge_mappings,
    build_config,
)
from pipeline.config.variants import NAME, Variant
from pipeline.configtools import apply_overrides, build, load_yaml

_RESERVED = ("seed", "lr")
"""Trial parameters that are not attention parameters: train.seed and train.lr."""


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    type: Literal["asha", "fifo"] = "asha"
    """asha: stop trials whose validation loss trails at a rung; fifo: run every trial out."""
    grace_period: int | None = None
    """Steps a trial trains before ASHA may stop it (default: train.checkpoint_every)."""
    reduction_factor: int = 2
    """ASHA keeps the best 1/reduction_factor of the trials at each rung."""

    def __post_init__(self) -> None:
        if self.grace_period is not None:
            check_int("grace_period", self.grace_period, 1)
        check_int("reduction_factor", self.reduction_factor, 2)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    task: str
    variant: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    """attention parameter -> the values to try."""
    seeds: list[int] = field(default_factory=lambda: [0])
    lr: list[float] | dict[str, list[float]] | None = None
    """None: the task's train.lr; a list: a grid; {loguniform: [low, high]}: sampled."""
    algorithm: Literal["grid", "optuna"] = "grid"
    num_samples: int = 1
    """grid: how many times the whole grid is run (each a new draw of a sampled lr);
    optuna: the number of trials."""
    scheduler: SchedulerConfig | None = None
    """This search's own scheduler (default: the tune section's), e.g. fifo for a rank sweep
    whose every point should finish."""

    def __post_init__(self) -> None:
        check_int("num_samples", self.num_samples, 1)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"must be a non-empty list of distinct seeds, got "
                                       f"{self.seeds!r}")
        for seed in self.seeds:
            check_int("seeds", seed, 0)
        for key, values in self.grid.items():
            if key in _RESERVED:
                raise ConfigError(f"grid.{key}", f"is not an attention parameter; use the "
                                                 f"search's `{key}{'s' if key == 'seed' else ''}`"
                                                 f" key")
            if not values or any(values.count(v) > 1 for v in values):
                raise ConfigError(f"grid.{key}", f"must be a non-empty list of distinct "
                                                 f"values, got {values!r}")
        self._check_lr()

    def _check_lr(self) -> None:
        if isinstance(self.lr, list):
            if not self.lr:
                raise ConfigError("lr", "must be a non-empty list of learning rates")
            for value in self.lr:
                check_float("lr", value, 1e-8, 1.0)
        elif isinstance(self.lr, dict):
            bounds = self.lr.get("loguniform")
            if set(self.lr) != {"loguniform"} or bounds is None or len(bounds) != 2 \
                    or not 0 < bounds[0] < bounds[1] <= 1.0:
                raise ConfigError("lr", f"must be {{loguniform: [low, high]}} with "
                                        f"0 < low < high <= 1, got {self.lr!r}")
        if self.algorithm == "optuna" and self.num_samples < 2:
            raise ConfigError("num_samples", "optuna needs at least 2 trials to search")

    @property
    def sampled_lr(self) -> tuple[float, float] | None:
        """(low, high) when the learning rate is drawn log-uniformly."""
        if isinstance(self.lr, dict):
            low, high = self.lr["loguniform"]
            return float(low), float(high)
        return None

    def points(self) -> list[dict[str, Any]]:
        """Every grid point (attention parameters), in the grid's order."""
        keys = list(self.grid)
        return [dict(zip(keys, values))
                for values in itertools.product(*(self.grid[k] for k in keys))]


@dataclass(frozen=True, kw_only=True)
class TuneSection:
    searches: dict[str, SearchConfig]
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_concurrent_trials: int | None = None
    """None: as many trials at once as the cluster's CPUs (and GPUs) hold."""
    trial_cpus: float = 0.0
    """CPUs of each trial's own process, which only waits for its Ray Train run (workers and
    Ray Data take theirs from `train`)."""

    def __post_init__(self) -> None:
        if not self.searches:
            raise ConfigError("searches", "must name at least one search")
        for name in self.searches:
            if not NAME.fullmatch(name):
                raise ConfigError(f"searches.{name}", f"a search name must match {NAME.pattern}")
        if self.max_concurrent_trials is not None:
            check_int("max_concurrent_trials", self.max_concurrent_trials, 1)
        if not 0.0 <= self.trial_cpus <= 1024.0:
            raise ConfigError("trial_cpus", f"must be a number in [0, 1024], got "
                                            f"{self.trial_cpus!r}")


@dataclass(frozen=True)
class TuneConfig:
    """A pipeline config and its searches; `name`, `storage` and `tracking` are the pipeline's."""

    pipeline: PipelineConfig
    tune: TuneSection

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def description(self) -> str:
        return self.pipeline.description

    @property
    def storage(self):
        return self.pipeline.storage

    @property
    def tracking(self):
        return self.pipeline.tracking

    def to_dict(self) -> dict[str, Any]:
        return {**self.pipeline.to_dict(), "tune": dataclasses.asdict(self.tune)}

    def task_of(self, search: str) -> TaskConfig:
        return self.pipeline.tasks[self.tune.searches[search].task]

    def tasks_searched(self) -> list[TaskConfig]:
        names = dict.fromkeys(s.task for s in self.tune.searches.values())
        return [self.pipeline.tasks[name] for name in names]


# ---------------------------------------------------------------------------------------------
# Loading


def load_tune_config(path: str, overrides: Sequence[str] = ()) -> TuneConfig:
    """Read a search config (its `base` beneath it), apply overrides, check every trial."""
    raw = _with_base(load_yaml(path), Path(path).resolve())
    raw = apply_overrides(raw, list(overrides))
    if "base" in raw:
        raise ConfigError("base", "is read from the search config file, before overrides "
                                  "apply: set it in the file, not on the command line")
    if "tune" not in raw:
        raise ConfigError("tune", "is required in a search config (see configs/tune_smoke.yaml)")
    tune_raw = raw.pop("tune")
    if raw.get("seeds") is not None:
        raise ConfigError("seeds", "repeats a pipeline run; a search runs each trial once per "
                                   "seed of its own `tune.searches.<name>.seeds`")
    pipeline = build_config(raw)
    section = build(TuneSection, tune_raw, "tune")
    config = TuneConfig(pipeline, section)
    for name in section.searches:
        check_search(config, name)
    return config


def _with_base(raw: Any, search_file: Path) -> Any:
    """`base: smoke` (a packaged config, or a path relative to the search config) merged
    beneath the search config's own keys."""
    if not isinstance(raw, Mapping) or "base" not in raw:
        return raw
    raw = dict(raw)
    base = raw.pop("base")
    found = _base_file(base, search_file)
    try:
        base_raw = load_yaml(str(found))
    except ConfigError as error:  # the base file's own problem: the message names the file
        raise (error.renamed("base") if error.field == "config" else error) from None
    if "tune" in base_raw:
        raise ConfigError("base", f"{found} is a search config; base must be a pipeline config")
    if "base" in base_raw:
        raise ConfigError("base", f"{found} has a base of its own ({base_raw['base']!r}); base "
                                  f"must be a pipeline config, bases do not chain")
    return merge_mappings(base_raw, raw)


def _base_file(base: Any, search_file: Path) -> Path:
    """The file `base` names: beside the search config (as given or + .yaml), else packaged."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError("base", f"must name a pipeline config (a packaged config such as "
                                  f"smoke, or a YAML path beside the search config), got "
                                  f"{base!r}")
    folder = search_file.parent
    candidates = [folder / base, folder / f"{base}.yaml", CONFIG_DIR / f"{base}.yaml"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        folders = [p for p in candidates if p.is_dir()]
        if folders:
            raise ConfigError("base", f"{base!r} is the directory {folders[0]}, expected a "
                                      f"pipeline config file")
        raise ConfigError("base", f"{base!r} is neither a file beside the search config nor a "
                                  f"packaged config ({CONFIG_DIR})")
    if found.resolve() == search_file:
        raise ConfigError("base", f"{base!r} is the search config itself ({search_file}); base "
                                  f"must name another, pipeline config")
    return found


def check_search(config: TuneConfig, name: str) -> None:
    """The search's task and variant exist; every grid point builds a model that fits the task;
    ASHA has checkpoints to compare at."""
    search = config.tune.searches[name]
    key = f"tune.searches.{name}"
    if search.task not in config.pipeline.tasks:
        raise ConfigError(f"{key}.task", f"unknown task {search.task!r}; the config's tasks: "
                                         f"{', '.join(config.pipeline.tasks)}")
    task = config.pipeline.tasks[search.task]
    if search.variant not in {v.name for v in task.variants}:
        raise ConfigError(f"{key}.variant", f"task {task.name} has no variant "
                                            f"{search.variant!r}; its variants: "
                                            f"{', '.join(v.name for v in task.variants)}")
    for point in search.points():
        variant = trial_variant(task, search.variant, point, key=key)
        try:
            task.model_config(variant, task.tokenizer.vocab_size)
        except ConfigError as error:
            raise ConfigError(f"{key}.grid", f"{point}: {error}") from None
    scheduler = search.scheduler or config.tune.scheduler
    if scheduler.type == "asha" and not task.train.checkpoint_every:
        raise ConfigError(f"tasks.{task.name}.train.checkpoint_every",
                          "must be > 0 for the ASHA scheduler: trials report their validation "
                          "loss at checkpoints")
    if scheduler.type == "asha" and (scheduler.grace_period or task.train.checkpoint_every) \
            >= task.train.max_steps:
        raise ConfigError(f"{key}.scheduler.grace_period",
                          f"must be below train.max_steps={task.train.max_steps}, or ASHA can "
                          f"never compare trials")


def trial_variant(task: TaskConfig, label: str, point: Mapping[str, Any], *,
                  key: str = "tune") -> Variant:
    """The task's variant `label` with the attention parameters of `point` set at every site
    whose spec has them; ConfigError naming the grid key when no site has one or a value is
    invalid."""
    base = next(v for v in task.variants if v.name == label)
    attention = base.attention_dict()
    specs = list(attention.values()) if task.kind == "translation" else [attention]
    updated = [dict(spec) for spec in specs]
    for parameter, value in point.items():
        holders = [spec for spec in updated if parameter in spec]
        if not holders:
            raise ConfigError(f"{key}.grid.{parameter}", f"variant {label}'s attention has no "
                                                         f"parameter {parameter!r}")
        for spec in holders:
            spec[parameter] = value
    raw = dict(zip(attention, updated)) if task.kind == "translation" else updated[0]
    try:
        return Variant.parse(label, raw, task.kind)
    except ConfigError as error:
        raise ConfigError(f"{key}.grid", f"{dict(point)}: {error}") from None

"""A search's Ray Tune pieces: the parameter space, the scheduler, the search algorithm, and how
many trials the cluster holds at once.

Trial parameters are flat: every grid key (an attention parameter), `seed` (train.seed) and,
when searched, `lr` (train.lr). The grid algorithm expands them with `tune.grid_search` in the
config's order (list the values you expect to be best first: ASHA then has strong rungs to cut
weaker later trials against); optuna samples them (`tune.choice`, `tune.loguniform`).
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.config import TaskConfig
from pipeline.config.tune import SearchConfig, TuneSection

METRIC = "val_loss"
"""What the scheduler and search algorithm minimise: the latest validation loss. Selection never
looks at the test split; the test scores are reported, not optimised."""
TIME_ATTR = "step"
"""ASHA's clock: optimizer steps, reported with every checkpoint."""


def param_space(search: SearchConfig) -> dict[str, Any]:
    from ray import tune

    optuna = search.algorithm == "optuna"
    pick = tune.choice if optuna else tune.grid_search
    space: dict[str, Any] = {key: pick(list(values)) for key, values in search.grid.items()}
    space["seed"] = pick(list(search.seeds))
    if isinstance(search.lr, list):
        space["lr"] = pick(list(search.lr))
    elif search.sampled_lr is not None:
        space["lr"] = tune.loguniform(*search.sampled_lr)
    return space


def scheduler(section: TuneSection, search: SearchConfig, task: TaskConfig):
    """The search's own scheduler, else the section's: ASHA on the validation loss, or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    settings = search.scheduler or section.scheduler
    if settings.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTR, metric=METRIC, mode="min", max_t=task.train.max_steps,
        grace_period=settings.grace_period or task.train.checkpoint_every,
        reduction_factor=settings.reduction_factor,
    )


def search_algorithm(search: SearchConfig, seed: int):
    """None (Tune's grid/random variant generator) or Optuna's TPE, seeded."""
    if search.algorithm != "optuna":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=METRIC, mode="min", sampler=optuna.samplers.TPESampler(seed=seed))


def trial_count(search: SearchConfig) -> int:
    """How many trials the search runs."""
    if search.algorithm == "optuna":
        return search.num_samples
    grid = math.prod(len(values) for values in search.grid.values())
    lrs = len(search.lr) if isinstance(search.lr, list) else 1
    return grid * len(search.seeds) * lrs * search.num_samples


def concurrency(section: TuneSection, task: TaskConfig, resources: dict[str, float]) -> int:
    """Trials at once: the configured number, at most what the cluster holds. A trial needs its
    own CPUs, its workers' and one CPU for Ray Data's read tasks (without it the reads never
    start and every trial hangs), and its workers' GPUs."""
    train = task.train
    cpus = section.trial_cpus + train.num_workers * train.cpus_per_worker + 1
    fits = int(resources.get("CPU", 0) // cpus)
    if train.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // train.num_workers))
    fits = max(1, fits)
    wanted = section.max_concurrent_trials
    return fits if wanted is None else min(wanted, fits)

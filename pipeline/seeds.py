"""A run repeated over seeds (the config's `seeds: [0, 1, 2]`): per variant, the seeds'
results combined into mean and spread.

Each task's train and evaluate stages run once per seed, with the task's `train.seed` set to it
(`PipelineConfig.seeded`): their own folders, and their own MLflow child runs
(`<task>/<variant>/seed<s>`, tagged `heat.seed`, params `train.seed`), which the paper's report
(`pipeline.report`) groups by configuration. prepare and tokenize do not depend on the seed and
run once. A seed changes the initial weights, the dropout masks and the order of the batches;
the data, its split and the tokenizer stay fixed, so the spread is the training's own.

`combine` gives every variant one result, as a run of one seed would (the mean of each figure
over the seeds), plus for each score and the validation loss its sample standard deviation
(`<figure>_sd`), the half-width of Student's t 95% interval of the mean (`<figure>_ci95`), its
lowest and highest seed, and every seed's own result (`per_seed`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from pipeline.report.stats import seed_estimate
from pipeline.tracking import SPREAD_FIGURES, SPREADS


def combine(per_seed: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """seed -> variant -> result, to variant -> the seeds' combined result (module docstring).

    A figure is averaged over the seeds that report it as a number; `steps` and other integer
    counts too (a variant stopped early at different steps has a fractional mean)."""
    seeds = list(per_seed)
    variants = list(dict.fromkeys(v for results in per_seed.values() for v in results))
    combined = {}
    for variant in variants:
        results = {seed: per_seed[seed][variant] for seed in seeds if variant in per_seed[seed]}
        keys = list(dict.fromkeys(k for result in results.values() for k in result))
        merged: dict[str, Any] = {}
        for key in keys:
            values = [r[key] for r in results.values() if _number(r.get(key))]
            if values:
                merged[key] = sum(values) / len(values)
            if key in SPREAD_FIGURES and values:
                merged.update(spread(key, values))
        merged["seeds"] = list(results)
        merged["per_seed"] = {str(seed): dict(result) for seed, result in results.items()}
        combined[variant] = merged
    return combined


def spread(key: str, values: list[float]) -> dict[str, float]:
    """`<key>_sd`, `_ci95` (NaN for one seed), `_min`, `_max` of a figure's per-seed values
    (`tracking.SPREADS`, the names the parent run logs)."""
    estimate = seed_estimate(values)
    figures = {"sd": statistics.stdev(values) if len(values) > 1 else math.nan,
               "ci95": (estimate.high - estimate.mean) if estimate.high is not None else math.nan,
               "min": min(values), "max": max(values)}
    return {f"{key}_{name}": figures[name] for name in SPREADS}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

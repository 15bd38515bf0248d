"""Each variant's best shot per data set, and the paper's claims tested on them.

Best shot: a variant's runs on a data set are grouped by configuration (`collect.configuration`:
everything that is not the seed); the group with the lowest mean validation loss
(`best_val_loss`) is the variant's entry. The test score never takes part in choosing: picking
the configuration by test score would overstate every variant, the more the more configurations
it tried. Ties go to the group with more seeds, then to the configuration's text (determinism).

Claims, per data set, in the task's primary metric (BLEU, or accuracy as a fraction): HEAT beats
softmax, Linformer and Nystrom, and matches exact Hadamard within a margin (1 BLEU, 0.01
accuracy). The difference is HEAT's best shot minus the other's; its interval comes from a
bootstrap over seeds when both sides have two or more, else from the paired bootstrap over test
examples (see `stats`); `stats.beats_verdict` / `matches_verdict` turn it into a verdict.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.report import stats
from pipeline.report.collect import RunRecord, config_text
from pipeline.report.paper import PRIMARY, RANGE

HEAT = "heat"
CLAIMS = (("softmax", "beats"), ("linformer", "beats"), ("nystrom", "beats"),
          ("hadamard", "matches"))
MARGIN = {"translation": 1.0, "classification": 0.01}
# How far a score recomputed from the artifacts may sit from the logged one before it is flagged.
_AGREEMENT = {"translation": 0.01, "classification": 1e-9}


@dataclass(frozen=True)
class Cell:
    """A variant's best shot on a data set: the chosen configuration's runs (one per seed)."""

    dataset: str
    variant: str
    kind: str
    config: tuple[tuple[str, str], ...]
    runs: tuple[RunRecord, ...]
    val_loss: float  # the group's mean best_val_loss, what chose it
    configurations: int  # how many configurations of this variant were compared

    def estimate(self, metric: str) -> stats.Estimate | None:
        """Mean over the seeds that logged `metric`, the t interval clipped to the metric's
        range (two seeds give t = 12.7: the interval can pass 100 BLEU)."""
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        if not values:
            return None
        estimate = stats.seed_estimate(values)
        if estimate.low is None:
            return estimate
        low, high = RANGE[metric]
        return dataclasses.replace(estimate, low=max(low, estimate.low),
                                   high=min(high, estimate.high))

    @property
    def seeds(self) -> list[str]:
        return [str(r.seed) for r in self.runs]

    def describe(self) -> str:
        """What the Markdown says about how this cell was chosen."""
        chosen = (f"the only configuration run (mean validation loss {self.val_loss:.4g})"
                  if self.configurations == 1 else
                  f"lowest mean validation loss ({self.val_loss:.4g}) of "
                  f"{self.configurations} configurations")
        return f"{config_text(self.config)}; {chosen}; seeds {', '.join(self.seeds)}"


@dataclass(frozen=True)
class ClaimResult:
    """One claim on one data set: HEAT against `other`, `relation` beats or matches."""

    dataset: str
    kind: str
    other: str
    relation: str
    difference: float | None  # HEAT minus other, primary metric, raw units (accuracy fraction)
    low: float | None
    high: float | None
    method: str
    verdict: str
    note: str = ""

    @property
    def claim(self) -> str:
        return f"HEAT {self.relation} {self.other}"

    @property
    def margin(self) -> float | None:
        return MARGIN[self.kind] if self.relation == "matches" else None


def best_shots(runs: Iterable[RunRecord]) -> dict[tuple[str, str], Cell]:
    """(data set, variant) -> the variant's best shot there, chosen by validation loss."""
    groups: dict[tuple[str, str], dict[tuple, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list))
    for run in runs:
        groups[(run.dataset, run.variant)][run.config].append(run)
    cells = {}
    for (dataset, variant), configs in sorted(groups.items()):
        config, members = min(configs.items(), key=_selection_rank)
        members = sorted(members, key=lambda r: (_seed_key(r.seed), r.run_id))
        cells[(dataset, variant)] = Cell(
            dataset, variant, members[0].kind, config, tuple(members),
            _selection_rank((config, members))[0], len(configs))
    return cells


def _selection_rank(group: tuple[tuple, list[RunRecord]]) -> tuple:
    """Lower is better: mean validation loss, then more seeds, then the configuration's text."""
    config, members = group
    loss = sum(r.metrics["best_val_loss"] for r in members) / len(members)
    return loss, -len(members), config_text(config)


def _seed_key(seed: str | None) -> tuple:
    text = str(seed)
    return (0, int(text), text) if text.isdigit() else (1, 0, text)


def judge_claims(cells: dict[tuple[str, str], Cell], datasets: Iterable[str], *, resamples: int,
                seed: int) -> list[ClaimResult]:
    """Every claim on every data set, in `CLAIMS` order."""
    scorers: dict[str, stats.ExampleScores] = {}
    results = []
    for dataset in datasets:
        kind = next(c.kind for (d, _), c in cells.items() if d == dataset)
        for other, relation in CLAIMS:
            results.append(_claim(cells.get((dataset, HEAT)), cells.get((dataset, other)),
                                  dataset, kind, other, relation, resamples, seed, scorers))
    return results


def _claim(heat: Cell | None, other: Cell | None, dataset: str, kind: str, name: str,
           relation: str, resamples: int, seed: int,
           scorers: dict[str, stats.ExampleScores]) -> ClaimResult:
    def result(verdict: str, **values) -> ClaimResult:
        return ClaimResult(dataset, kind, name, relation, verdict=verdict,
                           **{"difference": None, "low": None, "high": None, "method": "",
                              **values})

    missing = next((v for v, c in ((HEAT, heat), (name, other)) if c is None), None)
    if missing:
        return result(f"not resolved: no {missing} run")
    if len(heat.runs) >= 2 and len(other.runs) >= 2:
        observed, samples, paired = stats.seed_bootstrap(
            {str(r.seed): r.score for r in heat.runs}, {str(r.seed): r.score for r in other.runs},
            resamples, seed)
        method = (f"bootstrap over seeds, paired by seed (n={len(heat.runs)})" if paired else
                  f"bootstrap over seeds, unpaired (n={len(heat.runs)} vs {len(other.runs)})")
        note = ""
    else:
        runs = [*heat.runs, *other.runs]
        if any(r.references != runs[0].references for r in runs):
            return result("not resolved: the runs were scored on different test sets",
                          difference=_mean_score(heat) - _mean_score(other))
        side_a, side_b = ([_scorer(r, scorers) for r in c.runs] for c in (heat, other))
        observed, samples = stats.example_bootstrap(
            side_a, side_b, stats.resample_indices(side_a[0].size, resamples, seed))
        unit = "sentences" if kind == "translation" else "examples"
        method = (f"paired bootstrap over {side_a[0].size} test {unit} "
                  f"({len(heat.runs)} vs {len(other.runs)} run"
                  f"{'s' if len(heat.runs) + len(other.runs) > 2 else ''})")
        note = _disagreement(runs, scorers, kind)
    low, high = stats.percentile_interval(samples)
    verdict = (stats.beats_verdict(low, high) if relation == "beats"
               else stats.matches_verdict(low, high, MARGIN[kind]))
    return result(verdict, difference=observed, low=low, high=high, method=method, note=note)


def _mean_score(cell: Cell) -> float:
    return sum(r.score for r in cell.runs) / len(cell.runs)


def _scorer(run: RunRecord, cache: dict[str, stats.ExampleScores]) -> stats.ExampleScores:
    if run.run_id not in cache:
        build = stats.BleuScores if run.kind == "translation" else stats.AccuracyScores
        cache[run.run_id] = build(run.hypotheses, run.references)
    return cache[run.run_id]


def _disagreement(runs: list[RunRecord], scorers: dict[str, stats.ExampleScores],
                  kind: str) -> str:
    """A note when a run's artifacts do not reproduce its logged score (then the interval is
    about the artifacts, not about the table's number)."""
    off = [f"{r.run_id[:8]}: artifacts {scorers[r.run_id].full():.4g}, logged {r.score:.4g}"
           for r in runs if abs(scorers[r.run_id].full() - r.score) > _AGREEMENT[kind]]
    if not off:
        return ""
    return f"{PRIMARY[kind]} recomputed from the artifacts differs: " + "; ".join(off)

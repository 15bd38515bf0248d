"""The statistics of the report: intervals over seeds, paired bootstrap resampling, verdicts.

Two sources of uncertainty, two methods:

- over test examples (one trained model a side): paired bootstrap resampling (Koehn 2004). Each
  resample draws n example indices with replacement, and every system is scored on the *same*
  indices; the 95% interval of the difference is the 2.5th to 97.5th percentile of the resampled
  differences (numpy's linear interpolation). BLEU is re-computed from sacrebleu's own per-sentence
  sufficient statistics (what `sacrebleu.metrics.BLEU._extract_corpus_statistics` returns,
  summed and passed to `_compute_score_from_stats`, as sacrebleu's own `significance.py` does), so
  a resampled corpus BLEU is exactly sacrebleu's corpus BLEU of that resampled corpus, and the
  full sample gives `sacrebleu.corpus_bleu` itself. Accuracy is a mean of per-example correctness.
- over seeds (several trained models a side): the mean difference bootstrapped over seeds,
  paired by seed when both sides have the same seeds, else each side resampled on its own.

Every resampling draws from `numpy.random.default_rng(seed)`, so the same inputs and seed give
the same numbers. A table cell's own interval over its seeds is Student's t (95%, n - 1
degrees of freedom): with two or three seeds a bootstrap over seeds is far too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sacrebleu.metrics import BLEU

HOLDS = "holds"
FAILS = "does not hold"
UNRESOLVED = "not resolved by this data"

Z_975 = 1.959963984540054
# Student's t 0.975 quantiles for 1..30 degrees of freedom (no scipy in the project).
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
          2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
          2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_INDEX_BUDGET = 2_000_000  # index-matrix entries per resampling chunk (16 MB of int64)


@dataclass(frozen=True)
class Estimate:
    """A mean over n seeds, with its 95% interval when n >= 2."""

    mean: float
    low: float | None
    high: float | None
    n: int


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile; past 30 degrees of freedom the Cornish-Fisher expansion
    (within 1e-3 of the exact value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def seed_estimate(values: Sequence[float]) -> Estimate:
    """Mean of per-seed scores with Student's t 95% interval (none for a single seed)."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return Estimate(mean, None, None, len(data))
    half = t_quantile_975(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
    return Estimate(mean, mean - half, mean + half, len(data))


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap samples."""
    low, high = np.percentile(np.asarray(samples, dtype=float), [2.5, 97.5])
    return float(low), float(high)


class ExampleScores(Protocol):
    """A system's score on a test set, computable on any resample of its examples."""

    size: int

    def full(self) -> float: ...

    def resampled(self, indices: np.ndarray) -> np.ndarray: ...


class AccuracyScores:
    """Accuracy as the mean of per-example correctness (predicted class id == true id)."""

    def __init__(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} predictions for {len(references)} labels")
        self.correct = np.array([h.strip() == r.strip() for h, r in zip(hypotheses, references)],
                                dtype=float)
        self.size = len(self.correct)

    def full(self) -> float:
        return float(self.correct.mean())

    def resampled(self, indices: np.ndarray) -> np.ndarray:
        """(resamples, n) indices -> (resamples,) accuracies."""
        return self.correct[indices].mean(axis=1)


class BleuScores:
    """Corpus BLEU (sacrebleu defaults, one reference) from per-sentence sufficient statistics."""

    def __init__(self, hypotheses: Sequence[str], references: Sequence[str]) -> None:
        self.metric = BLEU()
        self.stats = bleu_statistics(hypotheses, references, self.metric)
        self.size = len(self.stats)

    def full(self) -> float:
        return bleu_from_statistics(self.stats.sum(axis=0), self.metric)

    def resampled(self, indices: np.ndarray) -> np.ndarray:
        """(resamples, n) indices -> (resamples,) corpus BLEU scores: the statistics summed over
        each resample (as draw counts times statistics; exact in float64 for integers < 2^53)."""
        counts = np.stack([np.bincount(row, minlength=self.size) for row in indices])
        totals = np.rint(counts.astype(float) @ self.stats.astype(float)).astype(np.int64)
        return np.array([bleu_from_statistics(row, self.metric) for row in totals])


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str],
                    metric: BLEU | None = None) -> np.ndarray:
    """sacrebleu's per-sentence BLEU statistics, (n, 2 + 2 * max order) integers: hypothesis and
    reference length, then matching and total n-grams per order."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    metric = metric or BLEU()
    stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.array(stats, dtype=np.int64).reshape(len(hypotheses), -1)


def bleu_from_statistics(totals: Sequence[int] | np.ndarray, metric: BLEU | None = None) -> float:
    """Corpus BLEU from summed statistics, by sacrebleu's own computation."""
    metric = metric or BLEU()
    return float(metric._compute_score_from_stats([int(x) for x in totals]).score)


def resample_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """`resamples` draws of n indices in [0, n) with replacement, in (rows, n) chunks."""
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, _INDEX_BUDGET // max(n, 1)))
    done = 0
    while done < resamples:
        size = min(rows, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def example_bootstrap(side_a: Sequence[ExampleScores], side_b: Sequence[ExampleScores],
                      index_chunks: Iterable[np.ndarray]) -> tuple[float, np.ndarray]:
    """Paired bootstrap over test examples: (observed difference, resampled differences) of
    the mean score of side a's systems minus side b's, every system on the same indices.

    With one system a side this is Koehn's paired bootstrap; with several (seeds) each side is
    the mean over its seeds on every resample, which covers the test set's sampling error only."""
    systems = [*side_a, *side_b]
    if not side_a or not side_b or len({s.size for s in systems}) != 1:
        raise ValueError("every system must be scored on the same, non-empty test set")
    observed = (float(np.mean([s.full() for s in side_a]))
                - float(np.mean([s.full() for s in side_b])))
    diffs = [np.mean([s.resampled(idx) for s in side_a], axis=0)
             - np.mean([s.resampled(idx) for s in side_b], axis=0) for idx in index_chunks]
    return observed, np.concatenate(diffs) if diffs else np.array([])


def seed_bootstrap(side_a: Mapping[str, float], side_b: Mapping[str, float], resamples: int,
                   seed: int) -> tuple[float, np.ndarray, bool]:
    """The mean difference a - b bootstrapped over seeds: (observed, resampled, paired).

    Paired (the per-seed differences resampled) when both sides have the same seeds; else each
    side's seeds resampled independently."""
    rng = np.random.default_rng(seed)
    if sorted(side_a) == sorted(side_b):
        diffs = np.array([side_a[s] - side_b[s] for s in sorted(side_a)])
        samples = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
        return float(diffs.mean()), samples, True
    a = np.array([side_a[s] for s in sorted(side_a)])
    b = np.array([side_b[s] for s in sorted(side_b)])
    samples = (a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
               - b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1))
    return float(a.mean() - b.mean()), samples, False


def beats_verdict(low: float, high: float) -> str:
    """"A beats B" from the 95% interval of A - B: holds above 0, fails below, else open."""
    if low > 0:
        return HOLDS
    if high < 0:
        return FAILS
    return UNRESOLVED


def matches_verdict(low: float, high: float, margin: float) -> str:
    """"A matches B" within +-margin: holds when the whole interval lies in [-margin, margin],
    fails when it lies entirely outside that band, else open."""
    if -margin <= low and high <= margin:
        return HOLDS
    if low > margin or high < -margin:
        return FAILS
    return UNRESOLVED

"""The report's plots (PNG, matplotlib's Agg backend): searches, and quality against cost.

- A search (runs tagged `heat.search`) on a data set: the primary score against the searched
  parameter (rank for HEAT and Linformer, order then feature_dim for Taylor, landmarks for
  Nystrom; else the first numeric searched parameter), one line per value of the other searched
  parameters (basis, ...), mean over seeds with the standard deviation as error bars, and the
  exact counterpart's best shot (hadamard for HEAT, softmax for the others) as a horizontal line.
- Per data set: the primary score against training throughput (tokens/s) for every run used,
  the Pareto-optimal runs (no other run both faster and better) ringed, connected and labelled.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.report.analysis import Cell
from pipeline.report.collect import RunRecord, searched_params
from pipeline.report.paper import PRIMARY, SCALE, TITLES, VARIANT_ORDER
from pipeline.report.tables import slug

SEARCH_AXES = {"heat": ("rank",), "taylor": ("order", "feature_dim"), "linformer": ("rank",),
               "nystrom": ("landmarks",)}
COUNTERPART = {"heat": "hadamard", "taylor": "softmax", "linformer": "softmax",
               "nystrom": "softmax"}


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display; files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(variant: str) -> str:
    """A fixed colour per variant, the same in every plot."""
    index = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else 6 + len(variant) % 4
    return f"C{index}"


def _numeric(values: Iterable[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def searched_axis(variant: str, keys: list[str], runs: list[RunRecord]) -> str | None:
    """The parameter a search is plotted against: the variant's own, else the first numeric."""
    preferred = [k for k in SEARCH_AXES.get(variant, ()) if k in keys]
    numeric = [k for k in keys if _numeric(r.params[f"search.{k}"] for r in runs
                                           if f"search.{k}" in r.params)]
    return (preferred or numeric or keys or [None])[0]


def search_plots(runs: list[RunRecord], cells: dict[tuple[str, str], Cell],
                 out: Path) -> list[Plot]:
    """A plot per (search, data set, variant)."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.search:
            groups[(run.search, run.dataset, run.variant)].append(run)
    plots = []
    for (search, dataset, variant), members in sorted(groups.items()):
        keys = sorted({k for r in members for k in searched_params(r.params)})
        axis = searched_axis(variant, keys, members)
        if axis is None:
            continue
        counterpart = cells.get((dataset, COUNTERPART.get(variant, "")))
        name = f"search_{slug(search)}_{slug(dataset)}" + \
            (f"_{slug(variant)}" if len({k[2] for k in groups if k[:2] == (search, dataset)}) > 1
             else "") + ".png"
        plots.append(_search_plot(members, axis, [k for k in keys if k != axis], counterpart,
                                  out / name, f"search {search}: {variant} on {dataset}"))
    return plots


def _search_plot(runs: list[RunRecord], axis: str, others: list[str], counterpart: Cell | None,
                 path: Path, title: str) -> Plot:
    plt = _pyplot()
    metric = PRIMARY[runs[0].kind]
    lines: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if f"search.{axis}" not in run.params:
            continue
        label = ", ".join(f"{k}={run.params.get(f'search.{k}', '—')}" for k in others) or "trials"
        lines[label][run.params[f"search.{axis}"]].append(run.score * SCALE[metric])
    values = sorted({x for line in lines.values() for x in line}, key=_sort_key)
    numeric = _numeric(values)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(lines.items()):
        xs = sorted(points, key=_sort_key)
        positions = [float(x) if numeric else values.index(x) for x in xs]
        means = [float(np.mean(points[x])) for x in xs]
        spread = [float(np.std(points[x], ddof=1)) if len(points[x]) > 1 else 0.0 for x in xs]
        ax.errorbar(positions, means, yerr=spread, marker="o", capsize=3, label=label)
    caption = "mean over seeds, error bars one standard deviation"
    if counterpart is not None:
        mean = counterpart.estimate(metric).mean * SCALE[metric]
        ax.axhline(mean, color="black", linestyle="--",
                   label=f"{counterpart.variant} (best shot, {len(counterpart.runs)} seed"
                         f"{'s' if len(counterpart.runs) != 1 else ''})")
        caption += f"; dashed: {counterpart.variant}, the exact counterpart"
    else:
        caption += "; no exact-counterpart run on this data set"
    floats = [float(v) for v in values] if numeric else []
    if numeric and min(floats) > 0 and max(floats) / min(floats) >= 8:
        ax.set_xscale("log", base=2)
    if numeric:
        ax.set_xticks(floats, values)
    else:
        ax.set_xticks(range(len(values)), values)
    ax.set(xlabel=axis, ylabel=TITLES[metric], title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path, title, caption)


def cost_plots(runs: list[RunRecord], out: Path) -> list[Plot]:
    """A quality-against-throughput plot per data set (runs without tokens_per_s left out)."""
    plots = []
    for dataset in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == dataset]
        points = [r for r in mine if "tokens_per_s" in r.metrics]
        if points:
            plots.append(_cost_plot(points, out / f"cost_{slug(dataset)}.png", dataset,
                                    len(mine) - len(points)))
    return plots


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better for
    both), in increasing order of the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _cost_plot(runs: list[RunRecord], path: Path, dataset: str, left_out: int) -> Plot:
    plt = _pyplot()
    metric = PRIMARY[runs[0].kind]
    points = [(r.metrics["tokens_per_s"], r.score * SCALE[metric]) for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in sorted({r.variant for r in runs}, key=_variant_key):
        mine = [p for p, r in zip(points, runs) if r.variant == variant]
        ax.scatter(*zip(*mine), color=_color(variant), label=variant, s=25)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="black",
            linewidth=1, zorder=0)
    ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=110,
               facecolors="none", edgecolors="black", label="Pareto-optimal")
    for i in front:
        ax.annotate(runs[i].variant, points[i], textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    speeds = [p[0] for p in points]
    if min(speeds) > 0 and max(speeds) / min(speeds) >= 10:
        ax.set_xscale("log")
    title = f"quality against cost: {dataset}"
    ax.set(xlabel="training throughput (tokens/s, higher is cheaper)", ylabel=TITLES[metric],
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    caption = (f"{len(runs)} runs; ringed and connected: Pareto-optimal (no run both faster "
               f"and better): {', '.join(runs[i].variant for i in front)}"
               + (f"; {left_out} runs without tokens_per_s left out" if left_out else ""))
    return _save(fig, plt, path, title, caption)


def _save(fig: Any, plt: Any, path: Path, title: str, caption: str) -> Plot:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return Plot(path, title, caption)


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _variant_key(variant: str) -> tuple:
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER),
            variant)

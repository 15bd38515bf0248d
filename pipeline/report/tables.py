"""The report's tables, each as Markdown (for report.md) and as CSV rows (a file per table).

Paper tables put every measured cell beside the published figure: the best shot's mean over
seeds, its 95% interval over seeds when there are two or more, and the seed count. A cell with
nothing measured, or a figure the paper does not give, is "—"; nothing is ever filled in.
Accuracy is shown in per cent (as the paper prints it); the CSV column names say the unit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.report.analysis import MARGIN, Cell, ClaimResult
from pipeline.report.collect import METRICS, Collection, RunRecord, config_text
from pipeline.report.paper import (
    DIGITS,
    PAPER_TABLES,
    SCALE,
    TITLES,
    VARIANT_ORDER,
    paper_set,
    paper_set_by_key,
    variant_label,
    variant_order,
)

MISSING = "—"
TABLE_METRICS = {"translation": ("bleu",), "classification": ("accuracy", "f1")}
CELL_COLUMNS = ("table", "paper_dataset", "dataset", "variant", "metric", "measured", "ci_low",
                "ci_high", "seeds", "paper", "configuration", "mean_val_loss", "run_ids")
CLAIM_COLUMNS = ("dataset", "claim", "metric", "unit", "difference", "ci_low", "ci_high",
                 "margin", "method", "verdict", "note")


@dataclass
class Table:
    """One table: its title, Markdown lines, and the CSV it is written to."""

    title: str
    csv_name: str
    columns: Sequence[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Column:
    header: str
    metric: str
    dataset: str | None  # a measured data set, or None for the paper's figure
    paper_key: str | None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def number(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return MISSING
    return f"{value * SCALE[metric]:{'+' if signed else ''}.{DIGITS[metric]}f}"


def cell_text(cell: Cell | None, metric: str) -> str:
    estimate = cell.estimate(metric) if cell else None
    if estimate is None:
        return MISSING
    seeds = f"{estimate.n} seed{'s' if estimate.n != 1 else ''}"
    if estimate.low is None:
        return f"{number(estimate.mean, metric)} ({seeds})"
    return (f"{number(estimate.mean, metric)} [{number(estimate.low, metric)}, "
            f"{number(estimate.high, metric)}] ({seeds})")


def paper_tables(cells: dict[tuple[str, str], Cell]) -> list[Table]:
    """Tables I-IV (always, so that what is missing shows), then a table per measured data set
    the paper has no column for."""
    datasets = sorted({d for d, _ in cells})
    tables = []
    for numeral, caption, kind, keys in PAPER_TABLES:
        columns = []
        for key in keys:
            paper = paper_set_by_key(key)
            measured = [d for d in datasets if paper_set(d) is paper] or [None]
            for metric in TABLE_METRICS[kind]:
                columns += [_Column(f"{paper.label} {TITLES[metric]}: measured"
                                    + (f" ({d})" if d and len(measured) > 1 else ""),
                                    metric, d, None) for d in measured]
                columns.append(_Column(f"{paper.label} {TITLES[metric]}: paper", metric, None, key))
        tables.append(_table(f"Table {numeral}: {caption}", f"table_{numeral}.csv", columns, cells,
                             kind))
    for dataset in (d for d in datasets if paper_set(d) is None):
        kind = next(c.kind for (d, _), c in cells.items() if d == dataset)
        columns = []
        for metric in TABLE_METRICS[kind]:
            columns += [_Column(f"{TITLES[metric]}: measured", metric, dataset, None),
                        _Column(f"{TITLES[metric]}: paper", metric, None, "")]
        tables.append(_table(f"{dataset} (no published figures)", f"table_{slug(dataset)}.csv",
                             columns, cells, kind))
    return tables


def _table(title: str, csv_name: str, columns: list[_Column], cells: dict[tuple[str, str], Cell],
           kind: str) -> Table:
    measured = {c.dataset for c in columns if c.dataset}
    variants = variant_order(set(VARIANT_ORDER) | {v for d, v in cells if d in measured})
    table = Table(title, csv_name, CELL_COLUMNS)
    table.markdown = [f"### {title}", "", "| variant | " + " | ".join(c.header for c in columns)
                      + " |", "|---" * (len(columns) + 1) + "|"]
    for variant in variants:
        row = [variant_label(variant)]
        for column in columns:
            if column.dataset is None:
                row.append(number(_paper_figure(column, variant), column.metric))
                continue
            cell = cells.get((column.dataset, variant))
            row.append(cell_text(cell, column.metric))
            table.rows.append(_cell_row(title, column, variant, cell))
        table.markdown.append("| " + " | ".join(row) + " |")
    chosen = [cells[(d, v)] for d in sorted(measured) for v in variants if (d, v) in cells]
    table.markdown += ["", f"Measured data sets: {', '.join(sorted(measured)) or 'none'}."
                       + (" Chosen configuration per variant (best shot):" if chosen else "")]
    table.markdown += [f"- {c.variant} on {c.dataset}: {c.describe()}" for c in chosen]
    return table


def _paper_figure(column: _Column, variant: str) -> float | None:
    if not column.paper_key:
        return None
    figure = paper_set_by_key(column.paper_key).figures.get(variant, {}).get(column.metric)
    return None if figure is None else figure / SCALE[column.metric]


def _cell_row(title: str, column: _Column, variant: str, cell: Cell | None) -> dict[str, Any]:
    paper = paper_set(column.dataset)
    figure = _paper_figure(_Column("", column.metric, None, paper.key if paper else None), variant)
    estimate = cell.estimate(column.metric) if cell else None

    def scaled(value: float | None) -> Any:
        return "" if value is None else value * SCALE[column.metric]

    return {
        "table": title, "paper_dataset": paper.label if paper else "", "dataset": column.dataset,
        "variant": variant, "metric": TITLES[column.metric],
        "measured": scaled(estimate.mean if estimate else None),
        "ci_low": scaled(estimate.low if estimate else None),
        "ci_high": scaled(estimate.high if estimate else None),
        "seeds": estimate.n if estimate else 0, "paper": scaled(figure),
        "configuration": config_text(cell.config) if cell else "",
        "mean_val_loss": cell.val_loss if cell else "",
        "run_ids": " ".join(r.run_id for r in cell.runs) if cell else "",
    }


def claims_table(results: list[ClaimResult]) -> Table:
    """Per data set, the four claims: difference, interval, method, verdict."""
    table = Table("The paper's claims", "claims.csv", CLAIM_COLUMNS)
    table.markdown = ["## The paper's claims", "",
                      "Difference = HEAT's best shot minus the other's, in the primary metric "
                      "(BLEU; accuracy in points). \"Beats\" holds when the 95% interval lies "
                      "above 0 and does not hold when it lies below 0. \"Matches\" holds when "
                      f"the whole interval lies within ±{MARGIN['translation']:g} BLEU "
                      f"(±{MARGIN['classification'] * 100:g} accuracy point, "
                      f"{MARGIN['classification']:g}) of 0 and does not hold when it lies entirely "
                      "outside that band. Anything else is not resolved by this data.", ""]
    for dataset in dict.fromkeys(r.dataset for r in results):
        table.markdown += [f"### {dataset}", "",
                           "| claim | difference | 95% interval | method | verdict |",
                           "|---|---|---|---|---|"]
        for r in (r for r in results if r.dataset == dataset):
            metric = "bleu" if r.kind == "translation" else "accuracy"
            interval = (MISSING if r.low is None else
                        f"[{number(r.low, metric, True)}, {number(r.high, metric, True)}]")
            verdict = r.verdict + (f" (note: {r.note})" if r.note else "")
            table.markdown.append(f"| {r.claim} | {number(r.difference, metric, True)} | "
                                  f"{interval} | {r.method or MISSING} | {verdict} |")
            table.rows.append(_claim_row(r, metric))
        table.markdown.append("")
    return table


def _claim_row(r: ClaimResult, metric: str) -> dict[str, Any]:
    def scaled(value: float | None) -> Any:
        return "" if value is None else value * SCALE[metric]

    return {"dataset": r.dataset, "claim": r.claim, "metric": metric,
            "unit": "BLEU" if metric == "bleu" else "accuracy points (%)",
            "difference": scaled(r.difference), "ci_low": scaled(r.low),
            "ci_high": scaled(r.high), "margin": scaled(r.margin), "method": r.method,
            "verdict": r.verdict, "note": r.note}


def runs_table(collection: Collection, cells: dict[tuple[str, str], Cell]) -> Table:
    """Every run the report used, as logged (accuracy a fraction), and whether it is in a cell."""
    chosen = {r.run_id for c in cells.values() for r in c.runs}
    columns = ("run_id", "experiment", "run_name", "task", "kind", "dataset", "paper_dataset",
               "variant", "search", "trial", "best_trial", "seed", "configuration",
               "best_shot", *METRICS, "params")
    table = Table("Runs used", "runs.csv", columns)
    table.rows = [_run_row(r, r.run_id in chosen) for r in collection.runs]
    return table


def _run_row(r: RunRecord, best_shot: bool) -> dict[str, Any]:
    paper = paper_set(r.dataset)
    return {"run_id": r.run_id, "experiment": r.experiment, "run_name": r.run_name,
            "task": r.task, "kind": r.kind, "dataset": r.dataset,
            "paper_dataset": paper.label if paper else "", "variant": r.variant,
            "search": r.search or "", "trial": r.trial or "",
            "best_trial": str(r.best_trial).lower(), "seed": r.seed or "",
            "configuration": config_text(r.config), "best_shot": str(best_shot).lower(),
            **{m: r.metrics.get(m, "") for m in METRICS},
            "params": json.dumps(dict(r.params), sort_keys=True)}


def skipped_table(collection: Collection) -> Table:
    table = Table("Runs skipped", "skipped.csv", ("run_id", "experiment", "reason"))
    table.rows = [dict(zip(table.columns, row)) for row in collection.skipped]
    counts = collection.skip_counts()
    table.markdown = [f"Skipped child runs: {sum(counts.values())}"
                      + (" (" + "; ".join(f"{n} {why}" for why, n in counts.items()) + ")"
                         if counts else "") + ". Each is listed in skipped.csv."]
    return table

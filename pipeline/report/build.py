"""One report: collect the runs, choose best shots, test the claims, write every file, log them.

The files (report.md, a CSV per table, the plots) depend only on the store's runs and on the
resampling settings: no clock time, no output path, so the same store gives the same tables.
The timestamp names only the output folder's default and the MLflow report run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipeline.report.analysis import best_shots, judge_claims
from pipeline.report.collect import Collection, ReportError, collect
from pipeline.report.plots import Plot, cost_plots, search_plots
from pipeline.report.publish import log_report
from pipeline.report.tables import Table, claims_table, paper_tables, runs_table, skipped_table

REPORT_FILE = "report.md"


@dataclass(frozen=True)
class ReportResult:
    out: Path
    files: list[Path]
    run_id: str
    collection: Collection


def make_report(tracking_uri: str, experiments: list[str] | None, out: Path, *,
                resamples: int, seed: int, run_name: str) -> ReportResult:
    """Read, analyse, write under `out`, and log the files to a `run_name` run in MLflow."""
    import mlflow

    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a folder")
    try:
        collection = collect(tracking_uri, experiments)
        files = write_report(collection, out, resamples=resamples, seed=seed)
        run_id = log_report(tracking_uri, files, run_name=run_name, params={
            "report.experiments": ", ".join(collection.experiments),
            "report.resamples": str(resamples), "report.seed": str(seed),
            "report.runs_used": str(len(collection.runs)),
            "report.runs_skipped": str(len(collection.skipped))})
    except mlflow.exceptions.MlflowException as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ReportError(f"MLflow store {tracking_uri}: {first}") from error
    return ReportResult(out, files, run_id, collection)


def write_report(collection: Collection, out: Path, *, resamples: int, seed: int) -> list[Path]:
    """Write report.md, the CSVs and the plots under `out`; the files written, in order."""
    out.mkdir(parents=True, exist_ok=True)
    cells = best_shots(collection.runs)
    datasets = sorted({r.dataset for r in collection.runs})
    claims = judge_claims(cells, datasets, resamples=resamples, seed=seed)
    tables = [*paper_tables(cells), claims_table(claims), runs_table(collection, cells),
              skipped_table(collection)]
    searches = search_plots(collection.runs, cells, out)
    costs = cost_plots(collection.runs, out)
    files = [_write_csv(table, out) for table in tables]
    files += [plot.path for plot in (*searches, *costs)]
    report = out / REPORT_FILE
    report.write_text(_markdown(collection, tables, searches, costs, resamples, seed),
                      encoding="utf-8")
    return [report, *files]


def _write_csv(table: Table, out: Path) -> Path:
    path = out / table.csv_name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table.columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table.rows)
    return path


def _markdown(collection: Collection, tables: list[Table], searches: list[Plot],
              costs: list[Plot], resamples: int, seed: int) -> str:
    *paper, claims, runs, skipped = tables
    trials = sum(1 for r in collection.runs if r.trial)
    lines = [
        "# The HEAT paper's claims, measured", "",
        f"Store: `{collection.tracking_uri}`; experiments: "
        f"{', '.join(collection.experiments)}. Runs used: {len(collection.runs)} finished child "
        f"runs ({trials} of them search trials), each listed in runs.csv. "
        + skipped.markdown[0], "",
        "Each measured cell is the variant's *best shot* on that data set: its runs are grouped "
        "by configuration (attention parameters, learning rate and searched parameters; "
        "everything but the seed), the group with the lowest mean validation loss "
        "(`best_val_loss`) is chosen, never by test score, and the cell is that group's mean "
        "test score over its seeds with a 95% Student's t interval over seeds when there are "
        "two or more. Accuracy in per cent. \"—\": not measured, or no published figure.",
        "",
        "Claim intervals: with two or more seeds on both sides, the mean difference bootstrapped "
        "over seeds (paired by seed when both sides have the same seeds); otherwise paired "
        "bootstrap resampling over the test examples (Koehn 2004; both systems scored on the "
        "same resampled indices; BLEU recomputed from sacrebleu's sufficient statistics), "
        f"95% percentile interval, {resamples} resamples, seed {seed}.", "",
        "## The paper's tables, measured beside the published figures", "",
    ]
    for table in paper:
        lines += [*table.markdown, "", f"CSV: {table.csv_name}", ""]
    lines += [*claims.markdown, f"CSV: {claims.csv_name}", ""]
    lines += _plot_section("Searches", searches, "No search trials (no runs tagged heat.search).")
    lines += _plot_section("Quality against cost", costs, "No run logged tokens_per_s.")
    lines += ["## Files", "", f"- {runs.csv_name}: every run used, with its scores and params",
              f"- {skipped.csv_name}: every child run skipped, with the reason", ""]
    return "\n".join(lines)


def _plot_section(title: str, plots: list[Plot], empty: str) -> list[str]:
    lines = [f"## {title}", ""]
    if not plots:
        return [*lines, empty, ""]
    for plot in plots:
        lines += [f"![{plot.title}]({plot.path.name})", "", f"{plot.title}: {plot.caption}.", ""]
    return lines

"""The run's final table: per task, each variant's scores, throughput, training time and its
attention's largest error against the exact counterpart on trained inputs (`attn err`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.tracking import browse_command

if TYPE_CHECKING:
    from pipeline.run import PipelineResult

_COLUMNS = {
    "translation": (("BLEU", "bleu"), ("chrF", "chrf")),
    "classification": (("accuracy", "accuracy"), ("F1", "f1")),
}


def format_summary(result: PipelineResult) -> str:
    """The final table (per task: variant, scores, tokens/s, wall time) and where to look."""
    lines = [f"run {result.run_name} of config {result.name}: {result.wall_s:.0f} s", ""]
    for task, variants in result.results.items():
        kind = result.tasks[task]
        scores = _COLUMNS[kind]
        seeds = next((v["seeds"] for v in variants.values() if "seeds" in v), None)
        header = ["variant", *(title for title, _ in scores), "tokens/s", "train s", "steps",
                  "attn err"]
        rows = [[variant, *(_score(values, key, seeds) for _, key in scores),
                 number(values.get("tokens_per_s"), 0), number(values.get("train_wall_s"), 1),
                 _steps(values.get("steps")), _error(values.get("attention_error"))]
                for variant, values in variants.items()]
        if seeds:
            title, key = scores[0]
            header.append(f"{title} per seed")
            for row, values in zip(rows, variants.values()):
                row.append(" ".join(number(values["per_seed"][str(s)].get(key), _digits(key))
                                    if str(s) in values["per_seed"] else "-" for s in seeds))
        heading = task if task == kind else f"{task} ({kind})"
        if seeds:
            heading += (f", {len(seeds)} seeds ({', '.join(map(str, seeds))}): mean ± half-width "
                        f"of the 95% t interval; figures after the scores are means")
        lines += [heading, *text_table(header, rows), ""]
    if result.evaluations:
        lines.append("re-scored with other eval settings, tracked as: " + ", ".join(
            f"{task} {label}/..." for task, label in result.evaluations.items()))
    ran = [r.label for r in result.stages if not r.skipped]
    skipped = [r.label for r in result.stages if r.skipped]
    lines += [f"stages run: {', '.join(ran) or 'none'}; skipped (finished earlier): "
              f"{', '.join(skipped) or 'none'}",
              f"outputs: {result.storage_root}",
              f"MLflow: {result.tracking_uri}, experiment {result.experiment!r}, parent run "
              f"{result.parent_run_id}",
              f"browse: {browse_command(result.tracking_uri, result.experiment_id)}"]
    return "\n".join(lines)


def _score(values: dict[str, Any], key: str, seeds: list[int] | None) -> str:
    """The score, or over several seeds its mean ± the t interval's half-width."""
    half, digits = values.get(f"{key}_ci95"), _digits(key)
    if not seeds or not isinstance(half, int | float) or half != half:  # NaN: one seed
        return number(values.get(key), digits)
    return f"{number(values.get(key), digits)} ± {number(half, digits)}"


def _digits(key: str) -> int:
    """Accuracy and F1 are fractions: a point is 0.01, so three decimals; BLEU, chrF two."""
    return 3 if key in ("accuracy", "f1") else 2


def _steps(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.1f}"
    return str(int(value)) if isinstance(value, int | float) else ""


def _error(value: Any) -> str:
    """The largest relative error of a variant's kernels against their exact counterparts on
    its trained inputs (the evaluate stage's diagnostics): 'exact' at 0, '-' when not measured."""
    if not isinstance(value, (int, float)):
        return "-"
    return "exact" if value == 0 else f"{value:.1e}"


def number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]

"""The benchmark's results as a Markdown table and as a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.bench.cases import REFERENCE


def format_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per n, one column per variant configuration; fwd+bwd ms (speed-up
    against SDPA) and peak MiB."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    lengths = sorted({r["n"] for r in records})
    cell = {(r["label"], r["n"]): r for r in records}
    head = "| n | " + " | ".join(labels) + " |"
    lines = [head, "|---" * (len(labels) + 1) + "|"]
    for n in lengths:
        row = [str(n)]
        for label in labels:
            r = cell.get((label, n))
            if r is None or r["fwd_bwd_ms"] is None:
                row.append("-")
                continue
            text = f"{r['fwd_bwd_ms']:.1f} ms"
            if r["variant"] != REFERENCE and r.get("speedup_vs_sdpa"):
                text += f" ({r['speedup_vs_sdpa']:.1f}x)"
            if r["peak_mem_mb"] is not None:
                text += f", {r['peak_mem_mb']:.0f} MiB"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    errors = [r for r in records if r["rel_error"] is not None]
    if errors:
        lines.append("")
        lines.append("Relative output error against the exact counterpart (largest n measured): "
                     + ", ".join(f"{label} {_last_error(errors, label):.1e}"
                                 for label in labels if _last_error(errors, label) is not None))
    return "\n".join(lines)


def _last_error(errors: list[dict[str, Any]], label: str) -> float | None:
    mine = [r for r in errors if r["label"] == label]
    return max(mine, key=lambda r: r["n"])["rel_error"] if mine else None


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Time (fwd+bwd) and peak memory against n, log-log; SDPA dashed; crossovers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in records))
    reference = {r["n"]: r["fwd_bwd_ms"] for r in records
                 if r["variant"] == REFERENCE and r["fwd_bwd_ms"]}
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 5))
    for label in labels:
        mine = sorted((r for r in records if r["label"] == label and r["fwd_bwd_ms"]),
                      key=lambda r: r["n"])
        if not mine:
            continue
        is_ref = mine[0]["variant"] == REFERENCE
        style = dict(color="black", linestyle="--", linewidth=2) if is_ref else {}
        xs = [r["n"] for r in mine]
        line, = ax_time.plot(xs, [r["fwd_bwd_ms"] for r in mine], marker="o", label=label, **style)
        mem = [(r["n"], r["peak_mem_mb"]) for r in mine if r["peak_mem_mb"]]
        if mem:
            ax_mem.plot(*zip(*mem), marker="o", label=label, color=line.get_color(),
                        linestyle=style.get("linestyle", "-"))
        if not is_ref:
            crossing = next((r for r in mine if reference.get(r["n"])
                             and r["fwd_bwd_ms"] < reference[r["n"]]), None)
            if crossing is not None:
                ax_time.scatter([crossing["n"]], [crossing["fwd_bwd_ms"]], s=160,
                                facecolors="none", edgecolors=line.get_color(), linewidths=2)
    first = records[0]
    title = (f"{first['device_name']} ({first['device']}, {first['dtype']}), b={first['batch']} "
             f"h={first['heads']} d={first['head_dim']}, "
             f"{'causal' if first['causal'] else 'non-causal'}")
    ax_time.set(xscale="log", yscale="log", xlabel="sequence length n",
                ylabel="forward + backward, median ms",
                title="time (circle: first n faster than SDPA)")
    ax_mem.set(xscale="log", yscale="log", xlabel="sequence length n",
               ylabel="peak memory above baseline, MiB", title="memory")
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xscale("log", base=2)
    ax_time.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

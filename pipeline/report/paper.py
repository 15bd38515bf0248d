"""What the HEAT paper published, and how the tracked data sets map onto its tables.

The figures are the paper's Tables I-IV as printed (BLEU; accuracy in per cent and F1 as a
fraction); nothing here is measured. A variant the paper has no row for (Exact Hadamard in the
classification tables, Taylor everywhere) has no entry: the report shows it as missing ("—"),
never filled in. A data set maps onto a paper column by its `heat.dataset` identity; data sets
the paper has no column for (the built-in corpora, local files) get tables of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

# The variants in the order the paper lists them; Taylor (no paper figure) last.
VARIANT_ORDER = ("softmax", "linformer", "nystrom", "hadamard", "heat", "taylor")
PAPER_NAMES = {
    "softmax": "Vanilla transformer",
    "linformer": "Linformer",
    "nystrom": "Nystromformer",
    "hadamard": "Exact Hadamard",
    "heat": "HEAT",
}

# The score each task kind is judged and selected on, and its secondary score.
PRIMARY = {"translation": "bleu", "classification": "accuracy"}
SECONDARY = {"translation": "chrf", "classification": "f1"}
# Display scale: accuracy is shown in per cent like the paper; BLEU, chrF and F1 as logged.
SCALE = {"bleu": 1.0, "chrf": 1.0, "accuracy": 100.0, "f1": 1.0}
TITLES = {"bleu": "BLEU", "chrf": "chrF", "accuracy": "accuracy (%)", "f1": "F1"}
DIGITS = {"bleu": 2, "chrf": 2, "accuracy": 2, "f1": 3}
# The values a score can take (logged units): an interval over seeds is clipped to them.
RANGE = {"bleu": (0.0, 100.0), "chrf": (0.0, 100.0), "accuracy": (0.0, 1.0), "f1": (0.0, 1.0)}


@dataclass(frozen=True)
class PaperSet:
    """One column group of a paper table: a data set and the published figures for it."""

    key: str
    label: str
    table: str
    prefixes: tuple[str, ...]  # `heat.dataset` values that belong here: exact, or "<prefix>:..."
    figures: dict[str, dict[str, float]]  # variant -> metric -> published value (display units)

    def matches(self, dataset: str) -> bool:
        return any(dataset == p or dataset.startswith(p + ":") for p in self.prefixes)


def _bleu(softmax: float, linformer: float, nystrom: float, hadamard: float,
          heat: float) -> dict[str, dict[str, float]]:
    values = dict(softmax=softmax, linformer=linformer, nystrom=nystrom, hadamard=hadamard,
                  heat=heat)
    return {variant: {"bleu": value} for variant, value in values.items()}


def _classification(**rows: tuple[float, float]) -> dict[str, dict[str, float]]:
    return {variant: {"accuracy": acc, "f1": f1} for variant, (acc, f1) in rows.items()}


PAPER_SETS = (
    PaperSet("wmt14", "WMT'14 en-fr", "I", ("wmt/wmt14",),
             _bleu(24.3, 24.8, 25.7, 25.6, 26.5)),
    PaperSet("iwslt15", "IWSLT'15 en-vi", "I", ("IWSLT/mt_eng_vietnamese",),
             _bleu(34.4, 34.9, 35.2, 35.1, 35.7)),
    PaperSet("imdb", "IMDb", "II", ("stanfordnlp/imdb",),
             _classification(softmax=(82.1, 0.857), linformer=(83.7, 0.863),
                             nystrom=(84.1, 0.868), heat=(84.3, 0.867))),
    PaperSet("yelp", "Yelp polarity", "III", ("fancyzhx/yelp_polarity",),
             _classification(softmax=(78.2, 0.795), linformer=(79.4, 0.804),
                             nystrom=(80.1, 0.810), heat=(80.1, 0.810))),
    PaperSet("glue", "GLUE SST-2", "IV", ("nyu-mll/glue",),
             _classification(softmax=(80.5, 0.815), linformer=(81.7, 0.826),
                             nystrom=(81.9, 0.828), heat=(82.2, 0.830))),
)

# The paper's tables: number, caption, task kind, the column groups in order.
PAPER_TABLES = (
    ("I", "BLEU on machine translation", "translation", ("wmt14", "iwslt15")),
    ("II", "IMDb sentiment classification", "classification", ("imdb",)),
    ("III", "Yelp polarity classification", "classification", ("yelp",)),
    ("IV", "GLUE (SST-2) classification", "classification", ("glue",)),
)


def paper_set(dataset: str) -> PaperSet | None:
    """The paper column a tracked data set belongs to, or None (no published figures)."""
    return next((p for p in PAPER_SETS if p.matches(dataset)), None)


def paper_set_by_key(key: str) -> PaperSet:
    return next(p for p in PAPER_SETS if p.key == key)


def variant_order(variants: set[str] | list[str]) -> list[str]:
    """The paper's order, then any other variant (a seventh one) alphabetically."""
    known = [v for v in VARIANT_ORDER if v in variants]
    return known + sorted(set(variants) - set(VARIANT_ORDER))


def variant_label(variant: str) -> str:
    paper = PAPER_NAMES.get(variant)
    return f"{variant} ({paper})" if paper else variant

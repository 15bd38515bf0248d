"""Row cleaning for the prepare stage: pure functions on pyarrow batches, run by Ray Data.

Each row ends with `drop_reason` null (kept) or the FIRST reason that applies, in this order:

    malformed     the row did not fit the schema (set while loading, `pipeline.data.rows`): not
                  JSON, a JSON array or scalar, a missing field, a value of the wrong type (a
                  nested object for a text; a float, NaN, bool, string or null label), a label
                  beyond int64, a TSV line with too many or too few fields, a Parquet value
                  pyarrow cannot turn into Python: whatever a row holds, it is a drop
    undecodable   not valid UTF-8, or a text that cannot be encoded as UTF-8 (a JSON-escaped lone
                  surrogate, "\\ud800"; both set while loading), or text with U+FFFD or control
                  characters (NUL included)
    bad_label     a label outside [0, num_labels), e.g. IMDb's unlabelled -1 rows
    empty         a text side is empty after normalisation
    too_short     a text side has fewer than min_chars characters
    too_long      a text side has more than max_chars characters
    length_ratio  translation: longer side / shorter side > max_length_ratio (characters)
    duplicate     the same content again in the same split (set by `resolve_duplicates`)
    eval_overlap  a train (validation) row whose content is also in validation or test (test)

The test split only loses rows to the first four (`STRUCTURAL`) unless `filter_test` is set: a
published test set (newstest2014: 3003 lines) must stay whole for BLEU to be comparable.

The content key is a hash of the normalised text (and the seed). Splits a source lacks are carved
from train by that key, so the assignment depends only on a row's content: not on file order,
partitioning or the number of workers, and duplicates always land in the same split.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.schema import Schema, TranslationSchema

DROP_REASONS = (
    "malformed", "undecodable", "bad_label", "empty", "too_short", "too_long", "length_ratio",
    "duplicate", "eval_overlap",
)
STRUCTURAL = frozenset(("malformed", "undecodable", "bad_label", "empty"))
SPLITS = ("train", "validation", "test")
_EVALUATION_ORDER = {"test": 0, "validation": 1, "train": 2}
_GARBAGE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")


@dataclass(frozen=True)
class CleaningRules:
    """The prepare stage's row rules (validated by `DataConfig`, which builds them)."""

    normalization: str
    """A `unicodedata` form (NFKC, NFC, ...) or "none"."""
    min_chars: int
    max_chars: int | None
    max_length_ratio: float | None
    num_labels: int
    filter_test: bool
    seed: int
    carve: dict[str, float]
    """split -> fraction of train rows moved there by content hash, for splits a source lacks."""


def normalize(text: str, form: str) -> str:
    """Unicode normal form, then whitespace runs (tabs, newlines) collapsed to one space and
    stripped, so that the tokenizer's decode reproduces the text exactly."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    return " ".join(text.split())


def content_key(parts: tuple[str | None, ...], seed: int) -> str:
    """A stable hash of the row's text: deduplication, hash splits and output order use it."""
    payload = "\x1f".join([str(seed), *(part or "" for part in parts)])
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def carve_split(key: str, carve: dict[str, float]) -> str:
    """train, or a split in `carve` with probability given by its fraction, decided by the key."""
    position = int(key[:8], 16) / 16**8  # uniform in [0, 1)
    for split, fraction in carve.items():
        if position < fraction:
            return split
        position -= fraction
    return "train"


def drop_reason(row: dict[str, Any], schema: Schema, rules: CleaningRules) -> str | None:
    """The first rule the (normalised) row breaks, or None to keep it."""
    texts = [row[column] for column in schema.text_columns]
    if any(_GARBAGE.search(text) for text in texts):
        return "undecodable"
    if "label" in row and not 0 <= row["label"] < rules.num_labels:
        return "bad_label"
    if any(not text for text in texts):
        return "empty"
    if row["split"] == "test" and not rules.filter_test:
        return None
    lengths = [len(text) for text in texts]
    if min(lengths) < rules.min_chars:
        return "too_short"
    if rules.max_chars is not None and max(lengths) > rules.max_chars:
        return "too_long"
    if (isinstance(schema, TranslationSchema) and rules.max_length_ratio is not None
            and max(lengths) / min(lengths) > rules.max_length_ratio):
        return "length_ratio"
    return None


def clean_batch(batch: pa.Table, schema: Schema, rules: CleaningRules) -> pa.Table:
    """Normalise the text of rows not already dropped while loading, key them, carve the
    missing splits out of train, and set `drop_reason`."""
    rows = batch.to_pylist()
    for row in rows:
        if row["drop_reason"] is not None:
            continue
        for column in schema.text_columns:
            row[column] = normalize(row[column], rules.normalization)
        row["key"] = content_key(tuple(row[c] for c in schema.text_columns), rules.seed)
        if row["split"] == "train" and rules.carve:
            row["split"] = carve_split(row["key"], rules.carve)
        row["drop_reason"] = drop_reason(row, schema, rules)
    return pa.Table.from_pylist(rows, schema=batch.schema)


def resolve_duplicates(group: pa.Table, filter_test: bool) -> pa.Table:
    """All kept rows sharing one content key: keep the first per split, drop the rest as
    `duplicate`, and drop train (validation) copies of validation or test content as
    `eval_overlap`. Test rows are all kept unless `filter_test`. For classification rows with
    the same text and different labels, the smallest label wins (a deterministic choice)."""
    rows = sorted(group.to_pylist(),
                  key=lambda r: (_EVALUATION_ORDER[r["split"]], r.get("label") or 0))
    seen: set[str] = set()
    for row in rows:
        split = row["split"]
        if split != "test" or filter_test:
            if any(_EVALUATION_ORDER[s] < _EVALUATION_ORDER[split] for s in seen):
                row["drop_reason"] = "eval_overlap"
            elif split in seen:
                row["drop_reason"] = "duplicate"
        seen.add(split)
    return pa.Table.from_pylist(rows, schema=group.schema)


def count_reasons(batch: pa.Table) -> pa.Table:
    """Rows per (split, reason) in a batch, "kept" for rows without a drop reason."""
    reasons = pc.fill_null(batch["drop_reason"], "kept")
    table = pa.table({"split": batch["split"], "reason": reasons})
    # use_threads=False: Acero's threaded group-by inside a Ray worker intermittently fails
    # with "ArrowIndexError: thread index N is out of range" (seen in CI); a batch is small.
    counts = table.group_by(["split", "reason"], use_threads=False).aggregate(
        [([], "count_all")])
    return counts.select(["split", "reason", "count_all"]).rename_columns(
        ["split", "reason", "rows"])

"""The two row schemas a source may hold, and the columns every stage after loading works on.

Sources speak HuggingFace's schemas: `{"translation": {"en": .., "fr": ..}}` for translation,
`{"text": .., "label": ..}` (field names configurable, plus an optional sentence-pair field) for
classification. TSV files hold the same content as columns: `src<TAB>tgt`, `text<TAB>label` or
`text<TAB>pair<TAB>label`. Each loader turns its rows into the canonical columns below plus
`split` and `drop_reason`, a row that does not fit the schema becoming `drop_reason="malformed"`
instead of an exception: one bad line in a 36M-line corpus must cost one row, not the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from heat.validation import ConfigError

TRANSLATION_COLUMNS = pa.schema([("src", pa.string()), ("tgt", pa.string())])
CLASSIFICATION_COLUMNS = pa.schema(
    [("text", pa.string()), ("text_pair", pa.string()), ("label", pa.int64())]
)
# Added by loading and cleaning: which split a row belongs to, why it is dropped (null: kept),
# and a hash of its content (deduplication, hash splits, output order).
BOOKKEEPING_COLUMNS = pa.schema(
    [("split", pa.string()), ("drop_reason", pa.string()), ("key", pa.string())]
)

PROBE_ROWS = 100
"""How many leading rows a source's schema check looks at."""
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")  # a TSV label: ASCII digits (not "1_0", not "٣")


@dataclass(frozen=True)
class TranslationSchema:
    """`{"translation": {src_lang: str, tgt_lang: str}}` -> columns src, tgt."""

    src_lang: str
    tgt_lang: str
    task = "translation"
    columns = TRANSLATION_COLUMNS
    text_columns = ("src", "tgt")
    required_columns = ("src", "tgt")
    """The canonical columns a row must have (not null)."""

    @property
    def source_fields(self) -> tuple[str, ...]:
        """The top-level fields of a record (Parquet or hub columns) that rows are made of."""
        return ("translation",)

    def from_record(self, record: Any) -> dict[str, Any] | None:
        pair = record.get("translation") if isinstance(record, dict) else None
        if not isinstance(pair, dict):
            return None
        src, tgt = pair.get(self.src_lang), pair.get(self.tgt_lang)
        if not isinstance(src, str) or not isinstance(tgt, str):
            return None
        return {"src": src, "tgt": tgt}

    def from_fields(self, fields: Sequence[str]) -> dict[str, Any] | None:
        if len(fields) != 2:
            return None
        return {"src": fields[0], "tgt": fields[1]}

    def describe(self) -> str:
        return (f'{{"translation": {{"{self.src_lang}": <text>, "{self.tgt_lang}": <text>}}}} '
                f"(JSONL/Parquet/hub) or <{self.src_lang} text><TAB><{self.tgt_lang} text> (TSV)")


@dataclass(frozen=True)
class ClassificationSchema:
    """`{text_field: str, [pair_field: str,] label_field: int}` -> columns text, text_pair, label.

    Labels are read as they are; whether they are in range is a cleaning rule (`bad_label`), so
    that IMDb's unlabelled -1 rows are counted rather than called malformed."""

    text_field: str
    label_field: str
    pair_field: str | None = None
    task = "classification"
    columns = CLASSIFICATION_COLUMNS

    @property
    def text_columns(self) -> tuple[str, ...]:
        return ("text", "text_pair") if self.pair_field else ("text",)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return (*self.text_columns, "label")

    @property
    def source_fields(self) -> tuple[str, ...]:
        pair = (self.pair_field,) if self.pair_field else ()
        return (self.text_field, *pair, self.label_field)

    def from_record(self, record: Any) -> dict[str, Any] | None:
        if not isinstance(record, dict):
            return None
        text, label = record.get(self.text_field), record.get(self.label_field)
        pair = record.get(self.pair_field) if self.pair_field else None
        if not isinstance(text, str) or not _is_int(label):
            return None
        if self.pair_field and not isinstance(pair, str):
            return None
        return {"text": text, "text_pair": pair, "label": label}

    def from_fields(self, fields: Sequence[str]) -> dict[str, Any] | None:
        if len(fields) != (3 if self.pair_field else 2):
            return None
        if not _INTEGER.fullmatch(fields[-1]):  # a header line, or a label name
            return None
        try:
            label = int(fields[-1])
        except ValueError:  # more digits than Python converts
            return None
        pair = fields[1] if self.pair_field else None
        return {"text": fields[0], "text_pair": pair, "label": label}

    def describe(self) -> str:
        pair = f', "{self.pair_field}": <text>' if self.pair_field else ""
        tsv_pair = "<pair><TAB>" if self.pair_field else ""
        return (f'{{"{self.text_field}": <text>{pair}, "{self.label_field}": <integer>}} '
                f"(JSONL/Parquet/hub) or <text><TAB>{tsv_pair}<integer label> (TSV)")


Schema = TranslationSchema | ClassificationSchema


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def work_schema(schema: Schema) -> pa.Schema:
    """Canonical columns plus bookkeeping: what loaders and cleaning produce."""
    return pa.schema(list(schema.columns) + list(BOOKKEEPING_COLUMNS))


def malformed_row(schema: Schema, split: str, reason: str = "malformed") -> dict[str, Any]:
    """A placeholder for a row that could not be read; it only counts."""
    row: dict[str, Any] = {name: None for name in schema.columns.names}
    row.update(split=split, drop_reason=reason, key=None)
    return row


def check_schema(schema: Schema, head: list[Any], where: str, key: str) -> None:
    """Fail fast when none of a source's first rows fits the schema (the wrong file or the
    wrong field names), naming the source, the expected schema and what the first row held.

    `head` holds raw records (dicts) or TSV field lists; an empty head means an empty source."""
    if not head:
        raise ConfigError(key, f"{where} is empty: no rows to read")
    convert = schema.from_fields if isinstance(head[0], list) else schema.from_record
    if any(convert(row) is not None for row in head):
        return
    first = repr(head[0])
    if len(first) > 300:
        first = first[:300] + "..."
    raise ConfigError(
        key,
        f"{where}: none of the first {len(head)} rows matches the {schema.task} schema; "
        f"expected {schema.describe()}; the first row is {first}",
    )

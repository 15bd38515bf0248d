"""Raw records and lines -> canonical rows (`pipeline.data.schema.work_schema`), one row at a time.

The conversion cannot fail on a row, whatever the row holds: every value is checked against its
column's type before pyarrow sees it, and a row that does not fit becomes a placeholder with a
drop reason, counted by the prepare stage (`pipeline.data.cleaning`):

    undecodable   a line that is not UTF-8; a text that does not encode as UTF-8 (a lone
                  surrogate such as JSON's "\\ud800")
    malformed     anything else: not JSON, a JSON array or scalar, a missing field, the wrong
                  type (a nested object for a text; a float, NaN, bool, string or null label),
                  an integer beyond int64, a TSV line with too many or too few fields, a value
                  pyarrow cannot turn into Python, or any other surprise

Text with NUL or other control characters converts fine and is dropped by cleaning
(`undecodable`). Raised errors are for whole files (`pipeline.data.damage`), never for rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipeline.data.schema import Schema, malformed_row, work_schema

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_MISSING = object()


def value_problem(values: dict[str, Any], schema: Schema) -> str | None:
    """The drop reason of a row whose values do not fit the canonical columns' types, or None:
    a required column null, a string not a `str` or not encodable as UTF-8, an int64 not a
    Python int (bools are not) or beyond int64's range."""
    for field in schema.columns:
        value = values.get(field.name)
        if value is None:
            if field.name in schema.required_columns:
                return "malformed"
            continue
        if pa.types.is_string(field.type):
            if not isinstance(value, str):
                return "malformed"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "undecodable"
        elif pa.types.is_int64(field.type):
            if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
                return "malformed"
        else:  # a column type this check does not know: refuse rather than guess
            return "malformed"
    return None


def canonical_row(values: dict[str, Any] | None, schema: Schema, split: str) -> dict[str, Any]:
    """`values` (a schema's `from_record`/`from_fields` result) as a work row tagged with
    `split`, or the placeholder of a dropped row when it is None or does not fit."""
    if values is None:
        return malformed_row(schema, split)
    problem = value_problem(values, schema)
    if problem is not None:
        return malformed_row(schema, split, problem)
    row = {name: values.get(name) for name in schema.columns.names}
    row.update(split=split, drop_reason=None, key=None)
    return row


def record_row(record: Any, schema: Schema, split: str) -> dict[str, Any]:
    """One HF-schema record (a dict, or anything else a file held) -> a work row."""
    if record is _MISSING:
        return malformed_row(schema, split)
    try:
        return canonical_row(schema.from_record(record), schema, split)
    except Exception:  # noqa: BLE001 - a surprise in one row costs that row
        log.debug("record not converted", exc_info=True)
        return malformed_row(schema, split)


def line_row(line: bytes, fmt: str, schema: Schema, split: str) -> dict[str, Any]:
    """One JSONL or TSV line (without its newline) -> a work row."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return malformed_row(schema, split, "undecodable")
    try:
        return canonical_row(parse_line(text, fmt, schema), schema, split)
    except Exception:  # noqa: BLE001 - e.g. RecursionError from "[[[[..." thousands deep
        log.debug("line not converted", exc_info=True)
        return malformed_row(schema, split)


def parse_line(text: str, fmt: str, schema: Schema) -> dict[str, Any] | None:
    if fmt == "tsv":
        return schema.from_fields(text.split("\t"))
    try:
        record = json.loads(text)
    except ValueError:  # not JSON, or an integer with more digits than Python converts
        return None
    return schema.from_record(record)


def rows_table(rows: list[dict[str, Any]], schema: Schema) -> pa.Table:
    """Work rows as a table. The rows are checked already; should pyarrow still refuse the
    batch, each row it refuses is replaced by a `malformed` placeholder."""
    types = work_schema(schema)
    try:
        return pa.Table.from_pylist(rows, schema=types)
    except Exception:  # noqa: BLE001
        log.warning("a batch of %d rows did not convert; converting row by row", len(rows))
    safe = []
    for row in rows:
        try:
            pa.Table.from_pylist([row], schema=types)
            safe.append(row)
        except Exception:  # noqa: BLE001
            safe.append(malformed_row(schema, row.get("split") or "train"))
    return pa.Table.from_pylist(safe, schema=types)


def records_to_rows(records: Sequence[Any], schema: Schema, split: str) -> pa.Table:
    """HF-schema records (dicts) -> work rows; a record that does not fit is dropped."""
    return rows_table([record_row(record, schema, split) for record in records], schema)


def lines_to_rows(data: bytes, fmt: str, schema: Schema, split: str) -> pa.Table:
    """Whole lines of a JSONL or TSV file -> work rows. Blank lines are not rows; a line that is
    not UTF-8 is `undecodable`, one that is not JSON or does not fit the schema `malformed`."""
    rows = []
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.strip():
            rows.append(line_row(line, fmt, schema, split))
    return rows_table(rows, schema)


def table_records(table: pa.Table | pa.RecordBatch, fields: Sequence[str]) -> list[Any]:
    """The records of a Parquet or hub batch, only `fields` (the schema's source fields) read:
    other columns may hold anything. A row pyarrow cannot turn into Python (a timestamp out of
    Python's range, say) is a marker that `record_row` drops as `malformed`."""
    table = table.select([name for name in fields if name in table.column_names])
    try:
        return table.to_pylist()
    except Exception:  # noqa: BLE001
        log.warning("a batch of %d records did not convert; converting row by row", len(table))
    records: list[Any] = []
    for index in range(table.num_rows):
        try:
            records += table.slice(index, 1).to_pylist()
        except Exception:  # noqa: BLE001
            records.append(_MISSING)
    return records


def table_to_rows(table: pa.Table | pa.RecordBatch, schema: Schema, split: str) -> pa.Table:
    """A Parquet or hub batch (HF-schema columns) -> work rows."""
    return records_to_rows(table_records(table, schema.source_fields), schema, split)

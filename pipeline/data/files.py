"""Local (or shared-storage) files as a source: JSONL, TSV or Parquet, one path per split.

A path is a file or a directory of files, local or any pyarrow URI; JSONL and TSV may be
compressed (.gz, .bz2, .zst: detected from the extension). Text files are read as bytes and split
into lines by this module, not by `ray.data.read_text`, because `read_text` decodes a whole file
at once and one invalid byte would fail the run; here it costs one row (`undecodable`).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from heat.validation import ConfigError
from pipeline import storage
from pipeline.data.schema import PROBE_ROWS, Schema, check_schema, malformed_row, work_schema

FORMATS = ("jsonl", "tsv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".parquet": "parquet"}
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
_PROBE_BYTES = 1 << 20


def resolve_format(path: str, fmt: str, key: str) -> str:
    """`fmt` itself, or for "auto" the format named by the file's extension (a directory: its
    first file's), compression suffixes ignored. A missing path or an empty directory is a
    `ConfigError` naming `key` (data.files.<split>)."""
    files = _existing_files(path, key)
    if fmt != "auto":
        return fmt
    name = files[0].lower()
    for suffix in _COMPRESSIONS:
        name = name.removesuffix(suffix)
    for extension, found in _EXTENSIONS.items():
        if name.endswith(extension):
            return found
    raise ConfigError(
        "data.format",
        f"cannot tell the format of {files[0]} ({key}) from its extension; "
        f"name the file *.jsonl, *.tsv or *.parquet, or set data.format to one of "
        f"{', '.join(FORMATS)}",
    )


def _existing_files(path: str, key: str) -> list[str]:
    if storage.info(path).type == pafs.FileType.NotFound:
        raise ConfigError(key, f"file not found: {path}")
    files = storage.list_files(path)
    if not files:
        raise ConfigError(key, f"{path} is an empty directory: no files to read")
    return files


def probe(path: str, fmt: str, schema: Schema, key: str) -> None:
    """Check the first rows of the first file against the schema before any Ray work."""
    first = storage.list_files(path)[0]
    check_schema(schema, _head_rows(first, fmt), first, key)


def _head_rows(uri: str, fmt: str) -> list[Any]:
    if fmt == "parquet":
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as handle:
            batches = pq.ParquetFile(handle).iter_batches(batch_size=PROBE_ROWS)
            return next(batches, pa.RecordBatch.from_pylist([])).to_pylist()
    head, truncated = storage.read_head(uri, _PROBE_BYTES)
    lines = head.split(b"\n")
    if truncated:
        lines = lines[:-1]  # cut mid-line
    rows: list[Any] = []
    for line in lines:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        if not text.strip():
            continue
        if fmt == "tsv":
            rows.append(text.split("\t"))
        else:
            try:
                rows.append(json.loads(text))
            except ValueError:
                rows.append(text)  # shown as the first row if nothing matches
        if len(rows) == PROBE_ROWS:
            break
    return rows


def records_to_rows(records: list[Any], schema: Schema, split: str) -> pa.Table:
    """HF-schema records (dicts) -> canonical rows; a record that does not fit is `malformed`."""
    rows = []
    for record in records:
        row = schema.from_record(record)
        if row is None:
            rows.append(malformed_row(schema, split))
        else:
            rows.append({**row, "split": split, "drop_reason": None, "key": None})
    return pa.Table.from_pylist(rows, schema=work_schema(schema))


def lines_to_rows(data: bytes, fmt: str, schema: Schema, split: str) -> pa.Table:
    """One JSONL or TSV file's bytes -> canonical rows. Blank lines are not rows; a line that is
    not UTF-8 is `undecodable`, one that is not JSON or does not fit the schema `malformed`."""
    rows = []
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            rows.append(malformed_row(schema, split, "undecodable"))
            continue
        row = _parse_line(text, fmt, schema)
        if row is None:
            rows.append(malformed_row(schema, split))
        else:
            rows.append({**row, "split": split, "drop_reason": None, "key": None})
    return pa.Table.from_pylist(rows, schema=work_schema(schema))


def _parse_line(text: str, fmt: str, schema: Schema) -> dict[str, Any] | None:
    if fmt == "tsv":
        return schema.from_fields(text.split("\t"))
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return schema.from_record(record)

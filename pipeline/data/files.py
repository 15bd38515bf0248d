"""Local (or shared-storage) files as a source: JSONL, TSV or Parquet, one path per split.

A path is a file or a directory of files, local or any pyarrow URI; JSONL and TSV may be
compressed (.gz, .bz2, .zst, .lz4: detected from the extension). A directory is read as its
data files: hidden, `_`-prefixed and empty files are skipped (`storage.list_files`: a Spark or
Hadoop output folder with `_SUCCESS` and `.crc` files reads as its `part-*` files), and with
`data.format: auto` the format is the one the data files' extensions name (files with no known
extension, such as a README, are ignored). Text files are read as bytes and split into lines by
this package, not by `ray.data.read_text`, because `read_text` decodes a whole file at once and
one invalid byte would fail the run; here it costs one row (`undecodable`, `pipeline.data.rows`).

Everything here runs on the driver, before Ray starts (`pipeline.data.sources`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from heat.validation import ConfigError
from pipeline import storage
from pipeline.data.damage import check_file, compression_of, parquet_batches, reading
from pipeline.data.rows import table_records
from pipeline.data.schema import PROBE_ROWS, Schema, check_schema

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "tsv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".parquet": "parquet"}
_NOT_DATA = (".crc",)  # Hadoop checksums, also when not hidden
PROBE_BYTES = 1 << 20
"""How much of the first file the schema probe reads: whole lines, about this many bytes..."""
PROBE_MAX_BYTES = 64 << 20
"""... or more, up to this many, while the first line has not ended."""
VERIFY_FILE_BYTES = 1 << 20
"""A compressed file at most this long (as stored) is decompressed to its end by the probe..."""
VERIFY_BYTES = 32 << 20
"""... up to this many bytes of them per split; longer files are verified while they are read."""


@dataclass(frozen=True)
class LocalFiles:
    """One split's data files and their format."""

    format: str
    files: tuple[str, ...]


def file_format(path: str) -> str | None:
    """The format a file's extension names (compression suffixes ignored), or None."""
    name = path.lower()
    suffix = compression_of(name)
    if suffix is not None:
        name = name.removesuffix(suffix)
    return next((fmt for ext, fmt in _EXTENSIONS.items() if name.endswith(ext)), None)


def resolve_files(path: str, fmt: str, key: str) -> LocalFiles:
    """The data files at `path` and their format: `fmt`, or for "auto" the one their extensions
    name. A missing path, a directory without data files, or data files of several formats is a
    `ConfigError` naming `key` (data.files.<split>)."""
    kind = storage.info(path).type
    if kind == pafs.FileType.NotFound:
        raise ConfigError(key, f"file not found: {path}")
    listed = storage.list_files(path)
    folder = kind == pafs.FileType.Directory
    if folder:
        listed = [f for f in listed if not f.lower().endswith(_NOT_DATA)]
    if not listed:
        raise ConfigError(key, f"{path} is an empty directory: no data files to read (hidden, "
                               f"_-prefixed and empty files are skipped); expected *.jsonl, "
                               f"*.tsv or *.parquet files")
    if fmt != "auto":
        return LocalFiles(fmt, tuple(listed))
    by_format: dict[str, list[str]] = {}
    for name in listed:
        by_format.setdefault(file_format(name) or "", []).append(name)
    known = sorted(f for f in by_format if f)
    if not known:
        what = (f"the files in {path} ({key}) from their extensions, e.g. {listed[0]}"
                if folder else f"{path} ({key}) from its extension")
        raise ConfigError("data.format", (
            f"cannot tell the format of {what}; "
            f"name the files *.jsonl, *.tsv or *.parquet (optionally .gz, .bz2, .zst), or set "
            f"data.format to one of {', '.join(FORMATS)}"))
    if len(known) > 1:
        examples = ", ".join(by_format[f][0] for f in known)
        raise ConfigError(key, f"{path} holds files of several formats ({examples}); expected "
                               f"one format per split: move the others out, or set data.format")
    if by_format.get(""):
        log.warning("%s: ignoring %d file(s) that are not %s, e.g. %s", path,
                    len(by_format[""]), known[0], by_format[""][0])
    return LocalFiles(known[0], tuple(by_format[known[0]]))


def probe(local: LocalFiles, schema: Schema, key: str) -> None:
    """Before any Ray work: the cheap damage checks of every file (`damage.check_file`: small
    compressed files are decompressed whole), and the first rows of the first file against the
    schema."""
    budget = VERIFY_BYTES
    for path in local.files:
        budget -= check_file(path, local.format, key, min(budget, VERIFY_FILE_BYTES))
    first = local.files[0]
    check_schema(schema, head_rows(first, local.format, schema, key), first, key)


def head_rows(uri: str, fmt: str, schema: Schema, key: str) -> list[Any]:
    """The first rows of a file, raw: records (dicts, or what else a line holds) or TSV field
    lists. A read error is a `DataFileError` naming the file."""
    if fmt == "parquet":
        batches = parquet_batches(uri, None, key, batch_rows=PROBE_ROWS)
        batch = next(batches, None)
        batches.close()
        if batch is None:
            return []
        try:
            return batch.to_pylist()  # all columns: the error shows what the first row held
        except Exception:  # noqa: BLE001 - a column Python cannot hold (a timestamp, say)
            return table_records(batch, schema.source_fields)
    lines = _head_lines(uri, fmt, schema, key)
    return [text.split("\t") if fmt == "tsv" else _json_or_text(text) for text in lines]


def _head_lines(uri: str, fmt: str, schema: Schema, key: str) -> list[str]:
    """The first non-blank lines (up to `PROBE_ROWS`), whole: a line cut by the probe's limit is
    not a row. Empty only for a file without any: a first line longer than what the probe
    reads is an error of its own, not an empty file."""
    for limit in (PROBE_BYTES, PROBE_MAX_BYTES):
        with reading(uri, fmt, key):
            head, more = storage.read_lines(uri, limit, PROBE_MAX_BYTES)
        lines = [text for line in head.split(b"\n")
                 if (text := line.rstrip(b"\r").decode("utf-8", errors="replace")).strip()]
        if lines or not more:
            return lines[:PROBE_ROWS]
    raise ConfigError(key, (
        f"{uri}: no record ends in its first {PROBE_MAX_BYTES >> 20} MiB (a first line "
        f"longer than that, or not line-based text); expected one record per line: "
        f"{schema.describe()}"))


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text  # shown as the first row if nothing matches

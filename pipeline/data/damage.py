"""Damaged input files: what is checked before Ray starts, and reading that names the file.

A damaged file (a truncated or fake compressed file, a corrupt Parquet file, one that cannot be
read) is the user's to fix, so it is a `DataFileError` (a `ConfigError`) keyed
`data.files.<split>` whose message starts with the file's path and says what was expected:

    data.files.train: /data/train.jsonl.gz: damaged gzip file (Truncated compressed stream);
    expected a complete gzip file: ...

On the driver, before Ray starts (`check_file`): the first bytes of each compressed file against
its format's magic number, each Parquet file's footer. What only shows while reading (a gzip
stream truncated near its end, a corrupt Parquet page) is raised by the readers here, inside the
Ray Data read UDF; the driver unwraps it from Ray's RayTaskError (`pipeline.errors`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from heat.validation import ConfigError
from pipeline import storage
from pipeline.data.rows import lines_to_rows, table_to_rows
from pipeline.data.schema import Schema

# extension -> (codec name in messages, magic number: the first bytes of every such file)
COMPRESSIONS = {
    ".gz": ("gzip", b"\x1f\x8b"),
    ".bz2": ("bzip2", b"BZh"),
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".lz4": ("LZ4", b"\x04\x22\x4d\x18"),
}
_REFETCH = "it may be truncated (an interrupted download or copy): fetch or write it again"


class DataFileError(ConfigError):
    """A `ConfigError` about one input file (picklable like every `ConfigError`, so that it
    crosses from a Ray task to the driver as itself)."""


def compression_of(path: str) -> str | None:
    """The compression suffix of a file name (.gz, .bz2, .zst, .lz4), or None."""
    name = path.lower()
    return next((suffix for suffix in COMPRESSIONS if name.endswith(suffix)), None)


def damaged(key: str, path: str, fmt: str, error: BaseException) -> DataFileError:
    """The error for a file that failed while being read (`fmt`: jsonl, tsv or parquet)."""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    suffix = compression_of(path)
    if fmt == "parquet":
        what = (f"not a readable Parquet file ({cause}); expected a complete Parquet file "
                f"(row groups and footer): {_REFETCH}")
    elif suffix is not None:
        codec = COMPRESSIONS[suffix][0]
        what = (f"damaged {codec} file ({cause}); expected a complete {codec} stream, as the "
                f"{suffix} extension says: {_REFETCH}")
    else:
        what = f"cannot read the file ({cause}); expected a readable {fmt.upper()} file"
    return DataFileError(key, f"{path}: {what}")


@contextmanager
def reading(path: str, fmt: str, key: str) -> Iterator[None]:
    """Turn a read error (pyarrow's OSError or ArrowException) into `damaged(...)`."""
    try:
        yield
    except (OSError, pa.ArrowException) as error:
        raise damaged(key, path, fmt, error) from None


def check_file(path: str, fmt: str, key: str, verify_bytes: int = 0) -> int:
    """The cheap checks of one file, on the driver: a compressed file starts with its format's
    magic number (not plain text named .gz), and is decompressed to its end when it is at most
    `verify_bytes` long (a truncated small file); a Parquet file has a readable footer.
    The bytes verified (0 but for a small compressed file)."""
    with reading(path, fmt, key):
        if fmt == "parquet":
            fs, inner = storage.filesystem(path)
            with fs.open_input_file(inner) as handle:
                pq.read_metadata(handle)
            return 0
        suffix = compression_of(path)
        if suffix is None:
            return 0
        head = storage.read_prefix(path, 8)
    codec, magic = COMPRESSIONS[suffix]
    if head and not head.startswith(magic):
        raise DataFileError(key, (
            f"{path}: not a {codec} file (it starts with {head!r}, not {codec}'s magic bytes "
            f"{magic.hex(' ')}); expected {codec}-compressed data, as the {suffix} extension "
            f"says: compress the file, or remove {suffix} from its name"))
    size = storage.info(path).size
    if size is None or size > verify_bytes:
        return 0
    for _ in text_chunks(path, fmt, key):
        pass
    return size


def text_chunks(path: str, fmt: str, key: str, chunk_bytes: int = 16 << 20) -> Iterator[bytes]:
    """A JSONL or TSV file's bytes, decompressed by extension, in pieces of whole lines of
    about `chunk_bytes` (a longer line is one piece); a read error is `damaged(...)`."""
    rest = b""
    with reading(path, fmt, key):
        fs, inner = storage.filesystem(path)
        with fs.open_input_stream(inner, compression="detect") as stream:
            while data := stream.read(chunk_bytes):
                data = rest + data
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    yield data[:cut]
    if rest:
        yield rest


def parquet_batches(path: str, columns: Sequence[str] | None, key: str,
                    batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """The `columns` of a Parquet file that it has (None: all), in batches; a read error is
    `damaged(...)`. The file's other columns are never read (they may hold anything)."""
    with reading(path, "parquet", key):
        fs, inner = storage.filesystem(path)
        with fs.open_input_file(inner) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            present = names if columns is None else [name for name in columns if name in names]
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
                yield batch


def file_rows(batch: pa.Table, fmt: str, schema: Schema, split: str) -> Iterator[pa.Table]:
    """The Ray Data read UDF: a batch of `path`s (one, in practice) -> work rows of each file,
    in pieces (`pipeline.data.rows`: a bad row is a drop); a damaged file is `damaged(...)`."""
    key = f"data.files.{split}"
    for path in batch["path"].to_pylist():
        if fmt == "parquet":
            for records in parquet_batches(path, schema.source_fields, key):
                yield table_to_rows(records, schema, split)
        else:
            for data in text_chunks(path, fmt, key):
                yield lines_to_rows(data, fmt, schema, split)

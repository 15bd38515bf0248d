"""Stage outputs by URI: a local path or any pyarrow filesystem URI (file://, s3://, gs://, ...).

Stages read and write through `pyarrow.fs` rather than `open()`, so the same code works when the
storage is a bucket or a shared mount that the Ray workers see and the driver's disk is not.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.fs as pafs


def resolve(uri: str) -> str:
    """A URI with a scheme is kept; a local path is made absolute (pyarrow and Ray need that)."""
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def local_path(uri: str) -> str | None:
    """The local path a URI names (a plain path or file://...), or None for a remote one."""
    if "://" not in uri:
        return resolve(uri)
    return uri.removeprefix("file://") if uri.startswith("file://") else None


def join(base: str, *names: str) -> str:
    """`base/name/...`, for local paths and URIs alike."""
    return "/".join([resolve(base).rstrip("/"), *names])


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem serving `uri` and the path inside it."""
    return pafs.FileSystem.from_uri(resolve(uri))


def info(uri: str) -> pafs.FileInfo:
    """Whether `uri` is a file, a directory or missing (`.type`)."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def list_files(uri: str) -> list[str]:
    """The files under a directory URI (recursively, sorted), or `[uri]` for a file.

    A directory listing skips what is not data, as Spark, Hadoop and pyarrow datasets do:
    hidden and `_`-prefixed files and folders (`.DS_Store`, `_SUCCESS`, `.part-0.crc`,
    `_temporary/`), and empty files (a Spark job's empty partitions)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        return [resolve(uri)]
    selector = pafs.FileSelector(path, recursive=True)
    root = path.rstrip("/") + "/"
    files = sorted(i.path for i in fs.get_file_info(selector)
                   if i.type == pafs.FileType.File and i.size != 0
                   and not _is_hidden(i.path.removeprefix(root)))
    prefix = resolve(uri)[: len(resolve(uri)) - len(path)] if "://" in uri else ""
    return [prefix + f for f in files]


def _is_hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.readall()


def read_head(uri: str, limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes of a file, decompressed by its extension (.gz, .bz2, .zst, ...),
    and whether the file is longer than that."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path, compression="detect") as stream:
        head = stream.read(limit + 1)
    return head[:limit], len(head) > limit


def read_prefix(uri: str, limit: int) -> bytes:
    """The first `limit` bytes of a file as stored (not decompressed)."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read(limit)


def read_lines(uri: str, limit: int, max_limit: int) -> tuple[bytes, bool]:
    """The first whole lines of a file, decompressed by its extension: about `limit` bytes of
    them, more (up to `max_limit`) while no line has ended; and whether the file goes on. A
    line cut by the limit is left out, so the result is empty only for an empty file or a first
    line longer than `max_limit`."""
    fs, path = filesystem(uri)
    chunks: list[bytes] = []
    size, ended = 0, False
    with fs.open_input_stream(path, compression="detect") as stream:
        while size < max_limit and not (ended and size >= limit):
            chunk = stream.read(min(limit, max_limit - size))
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)
            size += len(chunk)
            ended = ended or b"\n" in chunk
        more = bool(stream.read(1))
    head = b"".join(chunks)
    return (head[: head.rfind(b"\n") + 1], True) if more else (head, False)


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))

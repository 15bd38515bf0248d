"""Cached stage outputs: content keys and completion markers.

Every stage writes into its own folder, named by a key that hashes everything the output depends
on (the upstream stage's key, the stage's config section, the code version). A
`_SUCCESS` file holding the stage's result as JSON is written last, so a folder without one is an
interrupted attempt: a rerun with the same inputs finds the marker and skips the stage, a rerun
after a crash starts the stage again.

Locations may be local folders or any pyarrow filesystem URI (s3://, gs://, file://): all I/O
goes through `pipeline.storage`, never the driver's local disk, so Ray workers on other
nodes see the same files.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipeline.storage import exists, filesystem, join, read_json, write_json

MARKER = "_SUCCESS"
INPUTS = "_INPUTS.json"


def clear(location: str) -> None:
    """Delete what an interrupted attempt left, so the stage starts from an empty folder."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir_contents(path)


def content_key(payload: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able mapping (keys sorted, so dict order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_fingerprint(paths: Iterable[Path]) -> str:
    """A hash of source files: any edit to a stage's code invalidates its cached outputs.

    Conservative on purpose (a comment edit also reruns the stage): a stale output silently
    reused is far more expensive than one recomputed prepare or tokenize stage."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def file_fingerprint(location: str) -> dict[str, Any]:
    """Size and modification time of an input file, so an edited local corpus is a new input."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    return {"path": location, "size": info.size, "mtime_ns": info.mtime_ns}


@dataclass(frozen=True)
class StageOutcome:
    """What `run_cached` did: where the output lives, its result (JSON-able), whether it ran."""

    uri: str
    result: dict[str, Any]
    skipped: bool
    wall_s: float


def read_result(out_uri: str) -> dict[str, Any]:
    """The result a finished stage stored in its marker."""
    return read_json(join(out_uri, MARKER))["result"]


def finished(out_uri: str) -> bool:
    return exists(join(out_uri, MARKER))


def run_cached(
    out_uri: str,
    inputs: Mapping[str, Any],
    compute: Callable[[str], dict[str, Any]],
    *,
    clear_partial: bool = True,
) -> StageOutcome:
    """Run `compute(out_uri)` unless `out_uri/_SUCCESS` exists; return the (stored) result.

    `inputs` (everything the output depends on) is saved beside the output for humans; the
    caller derives `out_uri` from its hash. `compute` returns a JSON-able result, which the
    marker stores, so a skipped stage hands the same result downstream. `clear_partial=False`
    keeps what an interrupted attempt wrote (the train stage resumes from its checkpoints)."""
    marker = join(out_uri, MARKER)
    if exists(marker):
        return StageOutcome(out_uri, read_result(out_uri), skipped=True, wall_s=0.0)
    if clear_partial:
        clear(out_uri)
    write_json(join(out_uri, INPUTS), dict(inputs))
    start = time.perf_counter()
    result = compute(out_uri)
    wall_s = time.perf_counter() - start
    write_json(marker, {"result": result, "wall_s": round(wall_s, 3),
                        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return StageOutcome(out_uri, result, skipped=False, wall_s=wall_s)

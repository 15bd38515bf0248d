"""Which of a run's checkpoint folders to resume from, and which to remove.

Ray Train resumes from the latest checkpoint its controller has registered. A driver killed
(SIGTERM, `ray job stop`) in the second or two between the workers uploading a checkpoint and the
controller registering it leaves a complete checkpoint Ray does not know about: the resumed run
would start the variant again from step 0, and the folder would stay forever (Ray prunes only
what it registered).

So every rank writes a manifest of its part of a checkpoint (each file and its size) beside it;
a checkpoint folder is complete when the manifests of all its writers are there and every file
they list has its size. The workers resume from the newest complete folder, registered or not;
when the fit has ended, the folders Ray does not keep are removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from pipeline import storage

logger = logging.getLogger(__name__)

MANIFESTS = "manifests"
PREFIX = "checkpoint_"


def write_manifest(folder: Path, rank: int, writers: int) -> None:
    """Call last, after everything this rank puts into its checkpoint folder is written:
    `writers` is how many ranks contribute files to this checkpoint."""
    files = {str(p.relative_to(folder)): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file()}
    target = folder / MANIFESTS / f"rank_{rank}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"writers": writers, "files": files}), encoding="utf-8")


def is_complete(uri: str) -> bool:
    """Every writer's manifest is in the checkpoint folder at `uri` and every file it lists has
    the listed size."""
    fs, path = storage.filesystem(uri)
    try:
        sizes = {info.path[len(path) + 1:]: info.size
                 for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                 if info.type == pafs.FileType.File}
        manifests = [json.loads(storage.read_bytes(f"{uri}/{name}"))
                     for name in sizes if name.startswith(f"{MANIFESTS}/")]
    except (OSError, ValueError):
        return False
    if not manifests:
        return False
    writers = manifests[0]["writers"]
    if {f"{MANIFESTS}/rank_{r}.json" for r in range(writers)} - set(sizes):
        return False
    return all(sizes.get(name) == size for m in manifests for name, size in m["files"].items())


def checkpoint_folders(run_uri: str) -> list[str]:
    """The run's checkpoint folders, oldest first (Ray names them by their creation time)."""
    fs, path = storage.filesystem(run_uri)
    try:
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    names = sorted(info.base_name for info in found
                   if info.type == pafs.FileType.Directory and info.base_name.startswith(PREFIX))
    return [storage.join(run_uri, name) for name in names]


def resume_from(registered: Any | None, run_uri: str,
                say: Callable[[str], None] | None = None) -> Any | None:
    """The checkpoint to resume from: the newest complete folder of the run when it is newer
    than `registered` (Ray Train's `get_checkpoint()`), else `registered`. What it decides is
    logged, and passed to `say` (rank 0's progress lines, which reach the driver's console)."""
    import ray.train

    def tell(message: str) -> None:
        logger.info(message)
        if say is not None:
            say(message)

    newest = registered.path.rstrip("/").rsplit("/", 1)[-1] if registered is not None else ""
    for uri in reversed(checkpoint_folders(run_uri)):
        name = uri.rsplit("/", 1)[-1]
        if name <= newest:
            break
        if is_complete(uri):
            tell(f"resuming from {name}, written by a killed attempt before Ray Train "
                 f"registered it")
            fs, path = storage.filesystem(uri)
            return ray.train.Checkpoint(path, filesystem=fs)
        tell(f"{name} is incomplete (its attempt was killed while writing it): not used")
    return registered


def prune_unregistered(run_uri: str, kept: list[Any]) -> list[str]:
    """Remove the run's checkpoint folders that are not in `kept` (the checkpoints Ray Train
    keeps: `Result.best_checkpoints`, `Result.checkpoint`); the removed folders' URIs."""
    keep = {c.path.rstrip("/").rsplit("/", 1)[-1] for c in kept if c is not None}
    removed = []
    for uri in checkpoint_folders(run_uri):
        if uri.rsplit("/", 1)[-1] not in keep:
            fs, path = storage.filesystem(uri)
            fs.delete_dir(path)
            removed.append(uri)
    if removed:
        logger.info("removed %d checkpoint folder(s) Ray Train does not keep (killed attempts)",
                    len(removed))
    return removed

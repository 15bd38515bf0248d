"""The prepare stage: a source (hub, local files, built-in corpus) -> cleaned, deduplicated, split
Parquet on Ray Data, with every dropped row counted by reason.

Output (`out_uri`, a local path or any pyarrow URI):

    train.parquet/, validation.parquet/, test.parquet/   (Ray Data Parquet folders)
        translation:    src: string, tgt: string
        classification: text: string, text_pair: string (null without a pair), label: int64
    stats.json   rows kept per split, rows dropped per split and reason (`cleaning.DROP_REASONS`)

Rows in each split are written in the order of their content hash, so the output depends only on
the set of input rows: not on file order, partitioning or the number of workers. The rules and
their order are in `pipeline.data.cleaning`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import SaveMode
from ray.data.context import ShuffleStrategy

from heat.validation import ConfigError
from pipeline import stagecache, storage
from pipeline.config import DataConfig
from pipeline.data.cleaning import (
    DROP_REASONS,
    SPLITS,
    clean_batch,
    count_reasons,
    resolve_duplicates,
)
from pipeline.data.readers import read_source
from pipeline.data.schema import ClassificationSchema, Schema
from pipeline.stages.base import Stage, StageContext, result_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareResult:
    out_uri: str
    task: str
    rows: dict[str, int]
    """Rows kept per split."""
    dropped: dict[str, dict[str, int]]
    """split -> reason -> rows dropped."""

    def split_uri(self, split: str) -> str:
        return storage.join(self.out_uri, f"{split}.parquet")


def _kept_rows(batch: pa.Table, kept: bool) -> pa.Table:
    missing = pc.is_null(batch["drop_reason"])
    return batch.filter(missing if kept else pc.invert(missing))


def _where(dataset: ray.data.Dataset, kept: bool) -> ray.data.Dataset:
    """The kept rows, or the dropped ones."""
    return dataset.map_batches(_kept_rows, fn_kwargs={"kept": kept}, batch_format="pyarrow")


def _split_rows(batch: pa.Table, split: str) -> pa.Table:
    return batch.filter(pc.equal(batch["split"], split))


def deduplicate(dataset: ray.data.Dataset, filter_test: bool) -> ray.data.Dataset:
    """Group kept rows by content key and resolve each group (`resolve_duplicates`).

    As many shuffle partitions as `dataset` (materialized) has blocks: Ray's default (200)
    would cost tens of seconds of task overhead on a small corpus and write 200 tiny files.
    The sort-based shuffle, as in the `sort` that follows: the default hash shuffle starts
    aggregator actors, seconds of overhead that a small corpus does not repay."""
    partitions = max(1, dataset.num_blocks())
    kept = _where(dataset, kept=True)
    kept.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    resolved = kept.groupby("key", num_partitions=partitions).map_groups(
        resolve_duplicates, fn_kwargs={"filter_test": filter_test}, batch_format="pyarrow")
    return resolved.union(_where(dataset, kept=False))


def count_rows(dataset: ray.data.Dataset) -> dict[str, dict[str, int]]:
    """split -> reason ("kept" or a drop reason) -> rows, every split present."""
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for row in dataset.map_batches(count_reasons, batch_format="pyarrow").take_all():
        by_reason = counts[row["split"]]
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + row["rows"]
    return counts


def _dropped(by_reason: dict[str, int]) -> dict[str, int]:
    """The drop counts of one split, in the order the rules apply."""
    return {reason: by_reason[reason] for reason in DROP_REASONS if reason in by_reason}


def _check_not_empty(counts: dict[str, dict[str, int]], cfg: DataConfig) -> None:
    carved = cfg.cleaning_rules().carve
    for split in SPLITS:
        if counts[split].get("kept", 0):
            continue
        dropped = ", ".join(f"{r} {n}" for r, n in _dropped(counts[split]).items()) or "none"
        origin = (f"carved from train by data.{split}_fraction={carved[split]}"
                  if split in carved else "read from the source")
        raise ConfigError(
            cfg.source_key(split),
            f"empty corpus: no {split} rows left after cleaning ({origin}; dropped: {dropped})",
        )


def _write_splits(dataset: ray.data.Dataset, schema: Schema, out_uri: str) -> None:
    sort_keys = ["split", "key"] + (["label"] if isinstance(schema, ClassificationSchema) else [])
    ordered = _where(dataset, kept=True).sort(sort_keys).materialize()
    for split in SPLITS:
        rows = ordered.map_batches(_split_rows, fn_kwargs={"split": split},
                                   batch_format="pyarrow").select_columns(schema.columns.names)
        rows.write_parquet(storage.join(out_uri, f"{split}.parquet"), mode=SaveMode.OVERWRITE)


def run_prepare(cfg: DataConfig, out_uri: str, *, num_cpus: int | None = None) -> PrepareResult:
    """Read, clean, deduplicate and split the source; write Parquet and stats.json to `out_uri`.

    Uses the running Ray instance. `num_cpus` caps the concurrent tasks of the cleaning step
    (None: Ray's default). Raises `ConfigError` for a source that cannot be read or a split left
    empty, before anything is written."""
    schema = cfg.schema()
    rows = read_source(cfg).map_batches(
        clean_batch, fn_kwargs={"schema": schema, "rules": cfg.cleaning_rules()},
        batch_format="pyarrow", compute=ray.data.TaskPoolStrategy(size=num_cpus),
    ).materialize()
    if cfg.deduplicate:
        rows = deduplicate(rows, cfg.filter_test).materialize()
    counts = count_rows(rows)
    _check_not_empty(counts, cfg)
    _write_splits(rows, schema, out_uri)
    result = PrepareResult(
        out_uri=storage.resolve(out_uri), task=cfg.task,
        rows={split: counts[split].get("kept", 0) for split in SPLITS},
        dropped={split: _dropped(counts[split]) for split in SPLITS},
    )
    storage.write_json(storage.join(out_uri, "stats.json"),
                       {"task": result.task, "rows": result.rows, "dropped": result.dropped})
    for split in SPLITS:
        log.info("prepare: %s: %d rows kept, dropped %s", split, result.rows[split],
                 result.dropped[split] or "none")
    return result


def load_prepare_result(out_uri: str) -> PrepareResult:
    """The result of a finished prepare stage, from its stats.json (for a skipped rerun)."""
    stats = storage.read_json(storage.join(out_uri, "stats.json"))
    return PrepareResult(out_uri=storage.resolve(out_uri), task=stats["task"],
                         rows=stats["rows"], dropped=stats["dropped"])


def input_files(data: DataConfig) -> list[dict[str, Any]]:
    """Size and date of every local input file: an edited corpus is a new input."""
    files = []
    for split, location in sorted(data.files.items()):
        files += [{"split": split, **stagecache.file_fingerprint(path)}
                  for path in storage.list_files(location)]
    return files


class PrepareStage(Stage):
    name = "prepare"
    sections = ("data",)
    code = ("pipeline/stages/prepare.py", "pipeline/data/*.py", "pipeline/config/data.py")

    def inputs(self, context: StageContext) -> dict[str, Any]:
        data = context.task.data
        return {"data": dataclasses.asdict(data), "files": input_files(data)}

    def run(self, context: StageContext, out_uri: str) -> dict[str, Any]:
        return result_dict(run_prepare(context.task.data, out_uri, num_cpus=context.cpus))

    def load(self, uri: str) -> PrepareResult:
        return load_prepare_result(uri)

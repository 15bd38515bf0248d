"""Ray Data readers of every source: built-in corpora, local or shared files, the HuggingFace hub.

Each returns canonical rows (`pipeline.data.schema.work_schema`) tagged with their split; the
prepare stage cleans and splits them. The cheap checks that run when a config loads, before
Ray starts, are in `pipeline.data.sources`.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import ray

from heat.validation import ConfigError
from pipeline.config import DataConfig
from pipeline.data import hub
from pipeline.data.builtin import CORPORA
from pipeline.data.damage import file_rows
from pipeline.data.files import LocalFiles
from pipeline.data.rows import table_to_rows
from pipeline.data.schema import PROBE_ROWS, Schema, check_schema, work_schema
from pipeline.data.sources import local_sources

log = logging.getLogger(__name__)


def read_source(cfg: DataConfig) -> ray.data.Dataset:
    """All rows of the source as canonical rows tagged with their split (`work_schema`)."""
    schema = cfg.schema()
    if cfg.source == "builtin":
        return read_builtin(cfg.builtin, cfg.builtin_size, cfg.seed, schema)
    if cfg.source == "local":
        parts = [read_files(local, schema, split)
                 for split, local in local_sources(cfg).items()]
    else:
        hub.check_reachable(cfg.hub_id, schema)
        parts = [read_hub_split(cfg.hub_id, cfg.hub_config, hub_split, cfg.hub_revision,
                                    schema, split) for split, hub_split in cfg.hub_splits.items()]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def read_builtin(name: str, size: int, seed: int, schema: Schema) -> ray.data.Dataset:
    """The corpus as canonical rows, all in the train split (validation and test are carved
    from it by content hash, like any source without them)."""
    _, generate = CORPORA[name]
    rows = [{**row, "split": "train", "drop_reason": None, "key": None}
            for row in generate(size, seed)]
    return ray.data.from_arrow(pa.Table.from_pylist(rows, schema=work_schema(schema)))


def read_files(local: LocalFiles, schema: Schema, split: str) -> ray.data.Dataset:
    """The files of one split as canonical rows (`work_schema`) tagged with `split`.

    One file per task (`damage.file_rows`, in a module that imports neither torch nor the
    config, so that a fresh Ray worker starts fast): a damaged file is a `DataFileError`
    naming it, raised in the task; a bad row is a counted drop, never an error."""
    paths = ray.data.from_items([{"path": path} for path in local.files],
                                override_num_blocks=len(local.files))
    return paths.map_batches(
        file_rows, fn_kwargs={"fmt": local.format, "schema": schema, "split": split},
        batch_format="pyarrow", batch_size=1,
    )


def read_hub_split(
    hub_id: str, hub_config: str | None, hub_split: str, revision: str | None,
    schema: Schema, split: str,
) -> ray.data.Dataset:
    """One split of a hub data set as canonical rows (`work_schema`) tagged with `split`."""
    import datasets

    where = f"{hub_id!r} (config {hub_config!r}, split {hub_split!r})"
    log.info("loading %s from the HuggingFace hub", where)
    try:
        table = datasets.load_dataset(hub_id, hub_config, split=hub_split, revision=revision)
    except (OSError, ValueError) as error:  # not found, no connection, unknown config or split
        raise ConfigError(
            "data.hub_id", f"cannot load {where}: {error}; {hub.offline_advice(schema)}"
        ) from None
    except RuntimeError as error:
        if "scripts are no longer supported" not in str(error):
            raise
        raise ConfigError("data.hub_revision", (
            f"{where} is published as a loading script, which datasets no longer runs; set "
            "data.hub_revision: refs/convert/parquet to read the hub's Parquet conversion")
        ) from None
    check_schema(schema, table.select(range(min(PROBE_ROWS, len(table)))).to_list(),
                 f"hub data set {where}", "data.hub_id")
    return ray.data.from_huggingface(table).map_batches(
        table_to_rows, fn_kwargs={"schema": schema, "split": split}, batch_format="pyarrow"
    )

"""The checks of a data source that run when a config loads, before Ray starts anything.

Cheap: at most the first rows of the first file and the first bytes (Parquet: the footer) of
every file are read, the hub gets one short request. Ray-free, so loading a config never
imports Ray; the readers themselves are in `pipeline.data.readers`.
"""

from __future__ import annotations

from pipeline.config.data import DataConfig
from pipeline.data import hub
from pipeline.data.files import LocalFiles, probe, resolve_files


def check_source(cfg: DataConfig) -> None:
    """Fail fast, before any Ray work, on a source that cannot be read: missing files, a wrong
    schema, an empty or damaged file, an unreachable hub. Cheap: reads at most the first rows."""
    if cfg.source == "local":
        local_sources(cfg)
    elif cfg.source == "hub":
        hub.check_reachable(cfg.hub_id, cfg.schema())


def local_sources(cfg: DataConfig) -> dict[str, LocalFiles]:
    """split -> its data files and their format, after the cheap checks of every file and of
    the first rows of each split's first file against the schema."""
    sources = {}
    for split, path in cfg.files.items():
        key = f"data.files.{split}"
        sources[split] = resolve_files(path, cfg.format, key)
        probe(sources[split], cfg.schema(), key)
    return sources


def local_formats(cfg: DataConfig) -> dict[str, str]:
    """split -> file format (`local_sources`, formats only)."""
    return {split: local.format for split, local in local_sources(cfg).items()}

"""The checks of a data source that run when a config loads, before Ray starts anything.

Cheap: at most the first rows of each file are read, the hub gets one short request. Ray-free,
so loading a config never imports Ray; the readers themselves are in `pipeline.data.readers`.
"""

from __future__ import annotations

from pipeline.config.data import DataConfig
from pipeline.data import hub
from pipeline.data.files import probe, resolve_format


def check_source(cfg: DataConfig) -> None:
    """Fail fast, before any Ray work, on a source that cannot be read: missing files, a wrong
    schema, an empty file, an unreachable hub. Cheap: reads at most the first rows."""
    if cfg.source == "local":
        local_formats(cfg)
    elif cfg.source == "hub":
        hub.check_reachable(cfg.hub_id, cfg.schema())


def local_formats(cfg: DataConfig) -> dict[str, str]:
    """split -> file format, after checking each split's first rows against the schema."""
    formats = {}
    for split, path in cfg.files.items():
        key = f"data.files.{split}"
        formats[split] = resolve_format(path, cfg.format, key)
        probe(path, formats[split], cfg.schema(), key)
    return formats

"""A run's own folder and name: `<storage root>/pipeline-runs/<run>/` holds the resolved config
(written before any work), the summaries and `error.log`; `<config>.latest` names the config's
latest run, which `--resume` continues. What a killed run needs to be resumed, and what a failed
one leaves for a person to read.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from traceback import format_exception
from typing import Any, Protocol

import yaml

from heat.validation import ConfigError
from pipeline import storage
from pipeline.config import StorageConfig, TrackingConfig

logger = logging.getLogger(__name__)

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RUNS_FOLDER = "pipeline-runs"
ERROR_LOG = "error.log"
MAX_RUN_NAME = 100
"""Run names become folder names (with a task and a key added) and MLflow run names."""


class RunnableConfig(Protocol):
    """What the run bookkeeping needs of a config (a pipeline config or a search config)."""

    name: str
    description: str
    storage: StorageConfig
    tracking: TrackingConfig

    def to_dict(self) -> dict[str, Any]: ...


def run_path(config: RunnableConfig, *parts: str) -> str:
    return storage.join(config.storage.root, RUNS_FOLDER, *parts)


def run_folder(root: str, run_name: str) -> str:
    """Where run `run_name` under storage root `root` keeps its resolved config and summaries."""
    return storage.join(root, RUNS_FOLDER, run_name)


def recorded_run(run: str, storage_root: str) -> tuple[str, dict[str, Any]]:
    """(name, recorded raw config) of a run given by its name under `storage_root` or by the
    path of its folder; a ConfigError when there is no such run."""
    folder = run if storage.exists(storage.join(run, "config.yaml")) else \
        run_folder(storage_root, run)
    recorded_file = storage.join(folder, "config.yaml")
    if not storage.exists(recorded_file):
        raise ConfigError("run", f"no run {run!r}: {recorded_file} does not exist "
                                 f"(pass the run's folder, or --storage-root)")
    raw = yaml.safe_load(storage.read_bytes(recorded_file))
    return folder.rstrip("/").rsplit("/", 1)[-1], raw


def resolve_run_name(config: RunnableConfig, run_name: str | None, resume: bool) -> str:
    """The run to start, or with `resume` the run to continue (default: the config's latest).

    Resuming needs the same resolved config: the stage keys, the checkpoints and the MLflow
    params all assume it."""
    if run_name is not None and not (_RUN_NAME.fullmatch(run_name)
                                     and len(run_name) <= MAX_RUN_NAME):
        raise ConfigError("--run-name", f"must match {_RUN_NAME.pattern} and be at most "
                                        f"{MAX_RUN_NAME} characters (it names folders and "
                                        f"MLflow runs), got {_shorten(run_name)!r}")
    latest = run_path(config, f"{config.name}.latest")
    if not resume:
        run_name = run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if storage.exists(run_path(config, run_name)):
            raise ConfigError("--run-name", f"run {run_name!r} already exists under "
                                            f"{config.storage.root}: continue it with --resume, "
                                            f"or choose another name")
        return run_name
    if run_name is None:
        if not storage.exists(latest):
            raise ConfigError("--resume", f"no earlier run of config {config.name!r} under "
                                          f"{config.storage.root}; start one without --resume")
        run_name = storage.read_bytes(latest).decode("utf-8", errors="replace").strip()
        if not _RUN_NAME.fullmatch(run_name) or len(run_name) > MAX_RUN_NAME:
            raise ConfigError("--resume", f"{latest} does not hold a run name (it holds "
                                          f"{_shorten(run_name)!r}); name the run to resume "
                                          f"with --run-name")
    recorded = run_path(config, run_name, "config.yaml")
    if not storage.exists(recorded):
        raise ConfigError("--resume", f"no run {run_name!r} under {config.storage.root} to "
                                      f"resume")
    changed = differences(_recorded_config(recorded), config.to_dict())
    if changed:
        raise ConfigError("--resume", f"the config differs from run {run_name!r}'s at "
                                      f"{', '.join(changed[:5])}; resume with the same config "
                                      f"and overrides, or start a new run without --resume")
    logger.info("resuming run %s", run_name)
    return run_name


def _recorded_config(uri: str) -> dict[str, Any]:
    """The resolved config a run recorded when it started (a ConfigError if it is damaged)."""
    try:
        recorded = yaml.safe_load(storage.read_bytes(uri))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError("--resume", f"cannot read {uri}: "
                                      f"{str(error).splitlines()[0]}") from None
    if not isinstance(recorded, dict):
        raise ConfigError("--resume", f"{uri} does not hold the run's config (a mapping); the "
                                      f"run cannot be resumed, start a new one")
    return recorded


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys
                for d in differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)]
    return [] if old == new else [prefix or "config"]


def record_run(config: RunnableConfig, run_name: str) -> None:
    """Write the resolved config and the latest-run pointer before any work, so a run killed at
    any point can be resumed."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    storage.write_bytes(run_path(config, run_name, "config.yaml"), text.encode())
    storage.write_bytes(run_path(config, f"{config.name}.latest"), run_name.encode())


@contextmanager
def traceback_kept(config: RunnableConfig, run_name: str) -> Iterator[None]:
    """On a failure, append its traceback to the run folder's `error.log` and name that file on
    the exception (`heat_log`), so the command line can show one line and point there."""
    try:
        yield
    except Exception as error:
        log = run_path(config, run_name, ERROR_LOG)
        try:
            old = storage.read_bytes(log) if storage.exists(log) else b""
            text = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n{''.join(format_exception(error))}"
            storage.write_bytes(log, old + text.encode())
            error.heat_log = log  # type: ignore[attr-defined]
        except OSError:
            logger.exception("could not write %s", log)
        raise


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (`ray job stop`, a scheduler's kill) into KeyboardInterrupt, so the MLflow
    runs end FAILED with a reason instead of staying RUNNING forever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

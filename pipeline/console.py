"""What the terminal shows: the pipeline's own lines, not the libraries' chatter.

By default the console gets the `pipeline` and `heat` loggers at INFO (stage events, training
progress, scores) and everybody else's records (Ray, Ray Data, Ray Train, MLflow, alembic,
DeepSpeed, py.warnings) only from ERROR up; every record of every logger, at INFO, also goes to
`pipeline.log` in the run folder, so nothing is lost for a bug report. The Ray workers' own
output (Ray Train's reports and checkpoint lines, DeepSpeed's start-up banner, Ray's
placement-group warnings) is not forwarded to the driver at all (`ray.init(log_to_driver=False)`;
Ray's session logs keep it); rank 0 sends its progress lines through
`pipeline.training.progress` instead. `-v` (`configure(verbose=True)`) brings all of it back.

The same holds under `ray job logs --follow`: the job's log is its driver's output.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

OWN_LOGGERS = ("pipeline", "heat")
FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "pipeline.log"

_state = {"verbose": False}
_task: contextvars.ContextVar[str] = contextvars.ContextVar("heat_task", default="")


def verbose() -> bool:
    return _state["verbose"]


def configure(*, verbose: bool = False) -> None:
    """The command line's console: our lines short (`12:03:04 translation: train: starting`),
    the libraries' quiet unless `verbose`. Call before any work; `quiet_libraries` again after
    a library has installed its own handlers (Ray at import and `ray.init`, Ray Data at its
    first dataset)."""
    _state["verbose"] = verbose
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        handler.addFilter(_TaskPrefix())
        root.addHandler(handler)
    logging.captureWarnings(True)  # warnings.warn(...) -> the py.warnings logger
    if not verbose:  # MLflow's "🏃 View run ... at: URL" on stdout as each run ends (a server)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    quiet_libraries()


def quiet_libraries() -> None:
    """Gate every console handler of every logger (not only ours: Ray's and MLflow's own
    handlers, which do not propagate): libraries' records below ERROR are kept off the terminal
    unless verbose. Cheap and idempotent: call it whenever a library may have added a handler."""
    for logger in _all_loggers():
        for handler in logger.handlers:
            if _is_console(handler) and not any(isinstance(f, _Gate) for f in handler.filters):
                handler.addFilter(_Gate())


@contextmanager
def task_lines(task: str) -> Iterator[None]:
    """Inside the block, the stages' own lines (`prepare: train: 3599 rows kept`) are shown as
    the task's (`translation: prepare: train: ...`): the stage functions do not know which
    task they serve, and the same line of two tasks would read as a repeat."""
    token = _task.set(task)
    try:
        yield
    finally:
        _task.reset(token)


def ray_init_options() -> dict[str, bool]:
    """`ray.init` keywords: the workers' output reaches the driver only when verbose."""
    return {"log_to_driver": verbose()}


@contextmanager
def log_file(folder: str) -> Iterator[str]:
    """Every logger's records, at INFO, into `<folder>/pipeline.log` for the block (a local
    folder; for remote storage a local temporary file, uploaded there at the end)."""
    from pipeline import storage

    local = storage.local_path(storage.join(folder, LOG_FILE))
    path = local or os.path.join(tempfile.mkdtemp(prefix="heat-log-"), LOG_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(_TaskPrefix())
    attached: list[logging.Logger] = []

    def attach() -> None:
        for logger in _all_loggers():
            if (logger is logging.getLogger() or not logger.propagate) and \
                    handler not in logger.handlers:
                logger.addHandler(handler)
                attached.append(logger)

    attach()
    _attachers.append(attach)
    try:
        yield path
    finally:
        attach()  # loggers configured during the block (Ray Data's) got their records too
        _attachers.remove(attach)
        for logger in attached:
            logger.removeHandler(handler)
        handler.close()
        if not local:
            with open(path, "rb") as source:
                storage.write_bytes(storage.join(folder, LOG_FILE), source.read())


_attachers: list = []


def refresh() -> None:
    """After a library configured its logging: gate its console handlers, open log files to it."""
    quiet_libraries()
    for attach in list(_attachers):
        attach()


def _all_loggers() -> list[logging.Logger]:
    loggers = [logging.getLogger()]
    for name in list(logging.Logger.manager.loggerDict):
        logger = logging.getLogger(name)
        if isinstance(logger, logging.Logger):
            loggers.append(logger)
    return loggers


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to the terminal: to stdout or stderr (also as they are at emit time,
    as Ray's and logging's last-resort handlers do); not a file, not a test's capture."""
    if isinstance(handler, _ConsoleHandler) or type(handler).__name__ in ("_StderrHandler",
                                                                          "PlainRayHandler"):
        return True
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    stream = handler.stream
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) or \
        getattr(stream, "name", "") in ("<stdout>", "<stderr>") or \
        type(stream).__name__ == "MlflowLoggingStream"  # MLflow's: sys.stderr at write time


def _own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


class _TaskPrefix(logging.Filter):
    """Prefix the stages' records with the task of `task_lines` (once, whichever handler
    sees the record first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _task.get()
        if (task and record.name.startswith(("pipeline.stages.", "pipeline.data."))
                and not getattr(record, "heat_task", None)):
            record.msg = f"{task}: {record.msg}"
            record.heat_task = task
        return True


class _Gate(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or record.levelno >= logging.ERROR or (
            _own(record) and record.levelno >= logging.INFO)


class _ConsoleHandler(logging.StreamHandler):
    """The root logger's console handler that `configure` installs (once). It writes to
    whatever `sys.stderr` is when a record comes (a test's capture, a redirect), not to the
    stream of the moment it was made."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass

"""What a failure was, under Ray's wrappers (`pipeline.errors`), with Ray's real exception
classes: the cause a user can act on, in one line without colour codes."""

from __future__ import annotations

import logging

from ray.exceptions import RayTaskError

from heat.validation import ConfigError
from pipeline.errors import console_without_tracebacks, one_line, root_cause, user_error
from pipeline.tracking import failure_reason

REMOTE_TRACEBACK = ("\x1b[36mray::MapBatches(_lines_to_rows)()\x1b[39m (pid=1, ip=10.0.0.1)\n"
                    '  File "readers.py", line 70, in _lines_to_rows\n'
                    "UnicodeEncodeError: surrogates not allowed")


def wrapped(cause: BaseException) -> BaseException:
    """As the driver receives an exception raised in a Ray task: RayTaskError(<cause class>)."""
    return RayTaskError("fn", REMOTE_TRACEBACK, cause).as_instanceof_cause()


def test_a_config_error_raised_in_a_ray_task_is_found_under_the_wrapper():
    mistake = ConfigError("data.files.train", "/data/a.gz: truncated gzip")
    error = wrapped(mistake)
    assert isinstance(error, ConfigError)  # Ray's dynamic subclass: its message is the trace
    assert user_error(error) is mistake
    assert one_line(error) == "ConfigError: data.files.train: /data/a.gz: truncated gzip"


def test_the_reason_is_the_root_cause_without_colour_codes_or_ray_hints():
    cause = ValueError("bad block\nTo change retry attempts, configure DataContext")
    error = wrapped(cause)
    assert root_cause(error) is cause
    assert failure_reason(error) == "ValueError: bad block"
    assert user_error(error) is None
    chained = RuntimeError("training failed")
    chained.__cause__ = wrapped(KeyError("k"))
    assert one_line(chained) == "KeyError: 'k'"
    assert "\x1b[" not in failure_reason(RuntimeError(REMOTE_TRACEBACK))


def test_an_interrupt_says_how_it_happened():
    assert one_line(KeyboardInterrupt()).startswith("KeyboardInterrupt: interrupted (Ctrl-C")


def test_ray_tracebacks_stay_off_the_console_but_reach_the_other_handlers(tmp_path):
    import io

    logger = logging.getLogger("ray.test_errors")
    logger.propagate = False
    console, file_log = io.StringIO(), tmp_path / "session.log"
    console.name = "<stderr>"
    to_file, to_console = logging.FileHandler(file_log), logging.StreamHandler(console)
    logger.handlers = [to_file, to_console]
    console_without_tracebacks("ray.test_errors")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("a task failed")
    to_file.flush()
    assert "Traceback" in file_log.read_text()
    assert "Traceback" not in console.getvalue()
    assert "a task failed" in console.getvalue()

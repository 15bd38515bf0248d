"""What a failure was, under the wrappers Ray puts around it.

An exception raised in a Ray task or actor (a Ray Data UDF reading a damaged file, a Ray Train
worker) reaches the driver wrapped: `RayTaskError(UserCodeException)` around the original, its
message a whole remote traceback with ANSI colour codes. The user needs the original: a
`ConfigError` about their data is their mistake (exit 2, one line), anything else one line naming
the root cause, the traceback kept in the run folder's log.
"""

from __future__ import annotations

import logging
import re

from heat.validation import ConfigError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RAY_HINTS = ("To change retry attempts",)  # what Ray Data appends to a task's error message


def causes(error: BaseException) -> list[BaseException]:
    """`error` and everything it wraps, outermost first: Ray's `.cause`, `__cause__`, and an
    unsuppressed `__context__`."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        wrapped = getattr(current, "cause", None)
        if isinstance(wrapped, BaseException):
            current = wrapped
        elif current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return chain


def _is_ray_wrapper(error: BaseException) -> bool:
    """Ray's wrappers: RayTaskError (also as `RayTaskError(ConfigError)`, a dynamic subclass of
    the cause's class whose message is the remote traceback) and Ray Data's UserCodeException."""
    return any(cls.__module__.startswith("ray.") for cls in type(error).__mro__
               if cls.__name__ in ("RayTaskError", "RayActorError", "UserCodeException"))


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception that is not one of Ray's wrappers."""
    own = [e for e in causes(error) if not _is_ray_wrapper(e)]
    return own[-1] if own else error


def user_error(error: BaseException) -> ConfigError | None:
    """The `ConfigError` (a mistake in the user's config or data) that caused `error`, if any:
    the first one in its chain that is not a Ray wrapper."""
    for cause in causes(error):
        if isinstance(cause, ConfigError) and not _is_ray_wrapper(cause):
            return cause
    return None


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def one_line(error: BaseException, limit: int = 1000) -> str:
    """`Type: message` of the root cause, colour codes removed: its first line, and for a
    multi-line message its last one too."""
    cause = root_cause(error)
    lines = [line.strip() for line in strip_ansi(str(cause)).splitlines()
             if line.strip() and not line.strip().startswith(_RAY_HINTS)]
    if not lines and isinstance(cause, KeyboardInterrupt):
        lines = ["interrupted (Ctrl-C, or SIGTERM e.g. from `ray job stop`)"]
    if not lines:
        return type(cause).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(cause).__name__}: {text}"[:limit]


class _NoTraceback(logging.Filter):
    """Let a record through without its traceback (the console copy only: the handlers before
    this one, Ray's session log files, have written it whole)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (traceback in Ray's session logs)"
        return True


def console_without_tracebacks(*logger_names: str) -> None:
    """Keep tracebacks that Ray logs on the driver (Ray Data logs the whole stack of a failed
    task, as ERROR, before it re-raises) off the terminal: the failure is reported once, as one
    line, by the command line."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            console = stream is not None and getattr(stream, "name", "") in ("<stderr>",
                                                                              "<stdout>")
            if console and not any(isinstance(f, _NoTraceback) for f in handler.filters):
                handler.addFilter(_NoTraceback())

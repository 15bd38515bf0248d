"""Field checks shared by the attention specs and the model configs.

Every failure is a `ConfigError` whose message starts with the field's dotted name and says what
is allowed, so a config loader can report it as is (or prefix the config path).
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A bad config value. `field` is the dotted name of the offending field, `message` what is
    wrong with it; `str(error)` is `"{field}: {message}"`.

    A caller that knows where the checked value sits re-keys the error with `within` (prefix the
    field with the enclosing path) or `renamed` (replace the field), keeping the message and the
    class. Subclasses keep the `(field, message)` constructor so both can rebuild them.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Picklable (the default would call the class with one argument): an error raised in a
        Ray task or worker reaches the driver as itself."""
        return type(self), (self.field, self.message)

    def renamed(self, field: str) -> ConfigError:
        """The same error (same class and message) about `field`."""
        return type(self)(field, self.message)

    def within(self, prefix: str) -> ConfigError:
        """The same error with its field nested under `prefix`: `"{prefix}.{field}"`
        (the field alone when `prefix` is empty)."""
        return self.renamed(f"{prefix}.{self.field}" if prefix else self.field)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(field: str, value: Any, low: int, high: int | None = None) -> None:
    allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        raise ConfigError(field, f"must be {allowed}, got {value!r}")


def check_float(field: str, value: Any, low: float, high: float) -> None:
    """A finite number in (low, high]."""
    if not _is_number(value) or not math.isfinite(value) or not low < value <= high:
        raise ConfigError(field, f"must be a number in ({low}, {high}], got {value!r}")


def check_fraction(field: str, value: Any) -> None:
    """A number in [0, 1) (dropout, label smoothing)."""
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ConfigError(field, f"must be a number in [0, 1), got {value!r}")


def check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(field, f"must be one of {', '.join(allowed)}; got {value!r}")


def check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {value!r}")

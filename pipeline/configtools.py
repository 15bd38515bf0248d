"""Typed config sections from YAML mappings, and dotted command-line overrides.

A section is a frozen, keyword-only dataclass. `build(Section, mapping, "data")` checks the
mapping against the dataclass's type hints before anything runs:

- unknown keys are rejected, with the allowed ones listed;
- missing keys without a default are rejected;
- values must match the annotation (int, float, str, bool, Literal[...], list[T], dict[str, T],
  T | None, a nested section); an int is accepted for a float, nothing else is coerced;
- then the dataclass's own `__post_init__` checks ranges with `heat.validation` (raising
  `ConfigError`), and the error is re-raised with the full dotted path.

Every failure is a `ConfigError` whose message names the dotted key, the value and what is allowed.
Sections are plain dataclasses, so `dataclasses.asdict` gives back the resolved config (for
printing and tracking).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml

from heat.validation import ConfigError

_MISSING = dataclasses.MISSING
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"a mapping of str to {_describe(typing.get_args(annotation)[1])}"
    if dataclasses.is_dataclass(annotation):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(annotation))}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            Any: "any value"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _convert(path: str, value: Any, annotation: Any) -> Any:
    """Check `value` against `annotation`; nested sections are built, lists copied."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(path, value, option)
            except ConfigError as error:
                if len([o for o in options if o is not type(None)]) == 1:
                    raise error
        raise ConfigError(path, f"must be {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(path, f"must be {_describe(annotation)}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"must be {_describe(annotation)}, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_convert(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be {_describe(annotation)}, got {value!r}")
        _, item = typing.get_args(annotation)
        return {str(k): _convert(f"{path}.{k}", v, item) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, path)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation in (str, bool):
        if isinstance(value, annotation):
            return value
    else:  # an annotation this loader does not know is a programming error, not a config one
        raise TypeError(f"{path}: unsupported annotation {annotation!r}")
    raise ConfigError(path, f"must be {_describe(annotation)}, got {value!r}")


def build(cls: type, raw: Any, path: str) -> Any:
    """Build the dataclass `cls` from the mapping `raw`; errors name `path.key`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"must be {_describe(cls)}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ConfigError(key, f"unknown key; allowed keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name in raw:
            values[name] = _convert(key, raw[name], hints[name])
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(key, f"is required ({_describe(hints[name])})")
    try:
        return cls(**values)
    except ConfigError as error:  # a __post_init__ check: prefix the section's path
        if path and not error.field.startswith(path + "."):
            raise error.within(path) from None
        raise


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=200` -> (["train", "max_steps"], 200); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            "overrides", f"expected KEY.PATH=VALUE (for example train.max_steps=200), got {text!r}"
        )
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(key, f"cannot parse override value {value!r}: {error}") from None
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a deep copy of `raw` with each dotted override set (creating mappings on the way).

    Setting a key that does not exist is allowed here; `build` then rejects it as unknown, so the
    error names the key either way."""
    result = _deep_copy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    ".".join(keys[: i + 1]), f"is {child!r}, not a mapping: cannot set {text!r}"
                )
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def load_yaml(path: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; errors name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{path} is not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping at the top level, got {data!r}")
    return data

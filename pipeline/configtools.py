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
Files are read strictly (`load_yaml`, `StrictLoader`): UTF-8, a mapping at the top, string keys,
no key twice in one mapping; the error names the file, the key and the line.
Sections are plain dataclasses, so `dataclasses.asdict` gives back the resolved config (for
printing and tracking).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
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
    unknown = sorted(set(raw) - set(fields), key=str)
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
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            "overrides", f"expected KEY.PATH=VALUE (for example train.max_steps=200), got {text!r}"
        )
    try:
        parsed = parse_yaml(value, f"override value {value!r}") if value != "" else ""
    except ConfigError as error:  # a bad key in a mapping value: keyed within the override's
        field = "" if error.field == "config" else error.field
        raise error.renamed(key + ("" if field.startswith("[") or not field else ".") + field
                            ) from None
    except (yaml.YAMLError, RecursionError) as error:
        raise ConfigError(key, f"cannot parse override value {value!r} as YAML: "
                               f"{_yaml_problem(error)} (quote it to pass a string)") from None
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
                    ".".join(keys[: i + 1]), f"is {_short(child)}, not a mapping: cannot set "
                                             f"{text!r}"
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


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_yaml(path: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; errors name the file (and the line)."""
    try:
        data = parse_yaml(_read_text(path), path)
    except (yaml.YAMLError, RecursionError) as error:
        raise ConfigError("config", f"{path} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        raise ConfigError("config", f"{path} holds no YAML mapping (it is empty, only "
                                    f"comments or null): expected key: value lines")
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping at the top level (key: value "
                                    f"lines), got {type(data).__name__} {_short(data)}")
    return data


def _read_text(path: str) -> str:
    """The UTF-8 text of the file `path`; ConfigError when it is missing, not a regular file,
    unreadable or not UTF-8."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError("config", f"{path} is a directory, expected a YAML file")
    if file.exists() and not file.is_file():
        raise ConfigError("config", f"{path} is not a regular file, expected a YAML file")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except PermissionError:
        raise ConfigError("config", f"{path} cannot be read: permission denied") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError("config", f"{path} cannot be read: {reason}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError("config", f"{path} is not UTF-8 text: byte 0x{data[error.start]:02x} "
                                    f"at line {line}, column {column}; save the file as "
                                    f"UTF-8") from None


# ---------------------------------------------------------------------------------------------
# A strict YAML reader: one value per key, keys are strings, no recursive or exploding aliases


_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_KINDS = {"tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
          "tag:yaml.org,2002:bool": "a boolean (YAML 1.1 reads yes, no, on, off as booleans)",
          "tag:yaml.org,2002:null": "null", "tag:yaml.org,2002:timestamp": "a date"}
MAX_VALUES = 1_000_000
"""The most values a document may expand to through its aliases (a config is far smaller)."""


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key given twice in one mapping (naming both lines), a
    key that is not a string (`1:`, `true:`, `null:`), recursive aliases and documents that
    aliases expand past `MAX_VALUES`. Anchors, aliases and merge keys (`<<: *base`, whose keys
    the mapping's own keys override) work as in `SafeLoader`."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None and _check_node(node, "", set(), {}) > MAX_VALUES:
            raise ConfigError("config", f"{self.name} expands to more than {MAX_VALUES} values "
                                        f"through its aliases")
        return node


def parse_yaml(text: str, name: str) -> Any:
    """The YAML document `text` read by `StrictLoader`, its marks (line numbers) naming `name`:
    ConfigError for a bad key, yaml.YAMLError for bad syntax, RecursionError for deep nesting."""
    try:
        loader = StrictLoader(text)
    except yaml.reader.ReaderError as error:  # a control character: say where it is
        line = text.count("\n", 0, error.position)
        column = error.position - (text.rfind("\n", 0, error.position) + 1)
        code = error.character if isinstance(error.character, int) else ord(error.character)
        problem = f"the control character {code:#04x} is not allowed in YAML"
        raise yaml.MarkedYAMLError(problem=problem, problem_mark=yaml.Mark(
            name, error.position, line, column, None, None)) from None
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(error: BaseException) -> str:
    """One line: what is wrong and where (line, column)."""
    if isinstance(error, RecursionError):
        return "it nests too deeply"
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
        if error.context:
            text += f" ({error.context}"
            if error.context_mark is not None:
                text += f" at line {error.context_mark.line + 1}"
            text += ")"
        return " ".join(text.split())
    return " ".join(str(error).split())


def _check_node(node: yaml.Node, path: str, open_nodes: set[int], sizes: dict[int, int]) -> int:
    """Check every mapping under `node`; return how many values it expands to."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigError(path or "config", f"{_where(node.start_mark)}: an alias refers to a "
                                            f"value that contains it (a recursive structure)")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _check_node(item, f"{path}[{i}]", open_nodes, sizes)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                size += _check_node(value_node, path, open_nodes, sizes)
                continue
            key = _key(key_node, path)
            dotted = f"{path}.{key}" if path else key
            if key in seen:
                raise ConfigError(dotted, f"duplicate key in {key_node.start_mark.name}: first "
                                          f"at {_lines(seen[key], key_node.start_mark)}; a key "
                                          f"may appear once in a mapping (the later value would "
                                          f"silently replace the earlier)")
            seen[key] = key_node.start_mark
            size += _check_node(value_node, dotted, open_nodes, sizes)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def _key(node: yaml.Node, path: str) -> str:
    """The text of a string key; ConfigError naming the key and its line otherwise."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return node.value
    text = node.value if isinstance(node, yaml.ScalarNode) else (
        "[...]" if isinstance(node, yaml.SequenceNode) else "{...}")
    text = text or "null"
    kind = _KINDS.get(node.tag, "a sequence" if isinstance(node, yaml.SequenceNode) else
                      "a mapping" if isinstance(node, yaml.MappingNode) else f"tagged {node.tag}")
    dotted = f"{path}.{text}" if path else text
    raise ConfigError(dotted, f"key {text} at {_where(node.start_mark)} is {kind}, not a "
                              f"string: keys are names (quote it, '{text}', if that name is "
                              f"meant)")


def _where(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1} of {mark.name}"


def _lines(first: yaml.Mark, second: yaml.Mark) -> str:
    """"line 2, again at line 5", with columns when both are on one line."""
    if first.line == second.line:
        return (f"line {first.line + 1} column {first.column + 1}, again at line "
                f"{second.line + 1} column {second.column + 1}")
    return f"line {first.line + 1}, again at line {second.line + 1}"

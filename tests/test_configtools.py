"""pipeline.configtools: typed sections from mappings, dotted overrides, errors that name the key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import pytest

from heat.validation import ConfigError, check_int
from pipeline.configtools import apply_overrides, build, load_yaml


@dataclass(frozen=True, kw_only=True)
class Inner:
    rank: int = 8
    kind: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1, 16)


@dataclass(frozen=True, kw_only=True)
class Top:
    name: str
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None


def test_builds_nested_sections_and_widens_ints_to_floats():
    top = build(Top, {"name": "x", "lr": 1, "inner": {"rank": 4}, "tags": ["t"]}, "cfg")
    assert top == Top(name="x", lr=1.0, inner=Inner(rank=4), tags=["t"])
    assert isinstance(top.lr, float)
    assert asdict(top)["inner"] == {"rank": 4, "kind": "a"}


def test_yaml11_exponent_floats_are_numbers():
    assert build(Top, {"name": "x", "lr": "2e-3"}, "cfg").lr == pytest.approx(2e-3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": 1}, "cfg.name: must be a string, got 1"),
        ({"name": "x", "bogus": 1}, "cfg.bogus: unknown key; allowed keys: name, lr, inner"),
        ({}, "cfg.name: is required"),
        ({"name": "x", "inner": {"rank": 40}}, "cfg.inner.rank: must be an integer in [1, 16]"),
        ({"name": "x", "inner": {"kind": "c"}}, "cfg.inner.kind: must be one of 'a', 'b'"),
        ({"name": "x", "limit": "s"}, "cfg.limit: must be an integer, got 's'"),
        ({"name": "x", "tags": [1]}, "cfg.tags[0]: must be a string"),
        ({"name": "x", "lr": "fast"}, "cfg.lr: must be a number, got 'fast'"),
        ({"name": "x", "lr": True}, "cfg.lr: must be a number"),
        ({"name": "x", "inner": 3}, "cfg.inner: must be a mapping with keys rank, kind"),
    ],
)
def test_errors_name_the_key_value_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as error:
        build(Top, raw, "cfg")
    assert str(error.value).startswith(message)


def test_overrides_parse_yaml_values_and_do_not_touch_the_input():
    raw = {"name": "x", "inner": {"rank": 8}}
    out = apply_overrides(raw, ["inner.rank=5", "lr=0.5", "tags=[a, b]", "limit=null"])
    assert out == {"name": "x", "inner": {"rank": 5}, "lr": 0.5, "tags": ["a", "b"], "limit": None}
    assert raw == {"name": "x", "inner": {"rank": 8}}
    assert build(Top, out, "cfg").inner.rank == 5


@pytest.mark.parametrize("bad", ["noequals", "=3", "a..b=1"])
def test_malformed_overrides_are_rejected(bad):
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        apply_overrides({}, [bad])


def test_override_through_a_scalar_is_rejected():
    with pytest.raises(ConfigError, match="name: is 'x', not a mapping"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_load_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found: .*missing.yaml"):
        load_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_yaml(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(str(scalar))

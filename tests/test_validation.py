"""heat.validation: the ConfigError that every field check raises, and how callers re-key it."""

import pytest

from heat.validation import ConfigError, check_int


def test_config_error_keeps_field_and_message_apart():
    error = ConfigError("model.d_model", "must be an integer >= 1, got 0")
    assert str(error) == "model.d_model: must be an integer >= 1, got 0"
    assert error.field == "model.d_model"
    assert error.message == "must be an integer >= 1, got 0"


def test_message_may_contain_the_separator():
    error = ConfigError("a.b", "must be one of x: y; got 'z: w'")
    assert error.message == "must be one of x: y; got 'z: w'"
    assert error.within("top").message == error.message


def test_within_prefixes_the_field_and_keeps_the_message():
    with pytest.raises(ConfigError) as caught:
        check_int("rank", 17, 1, 16)
    nested = caught.value.within("attention")
    assert isinstance(nested, ConfigError)
    assert nested is not caught.value
    assert nested.field == "attention.rank"
    assert nested.message == caught.value.message
    assert str(nested) == "attention.rank: must be an integer in [1, 16], got 17"
    assert caught.value.field == "rank"  # the original is untouched
    assert nested.within("tasks.copy").field == "tasks.copy.attention.rank"
    assert nested.within("").field == "attention.rank"


def test_renamed_replaces_the_field():
    error = ConfigError("attention.rank", "must be an integer in [1, 16], got 17")
    renamed = error.renamed("model.attention.heat.rank")
    assert str(renamed) == "model.attention.heat.rank: must be an integer in [1, 16], got 17"
    assert renamed.message == error.message


class _Narrower(ConfigError):
    pass


def test_rekeying_keeps_the_subclass():
    error = _Narrower("rank", "bad")
    assert type(error.within("heat")) is _Narrower
    assert type(error.renamed("heat.rank")) is _Narrower
    with pytest.raises(_Narrower, match=r"^heat\.rank: bad$"):
        raise error.within("heat")

"""Combining a run's seeds (`pipeline.seeds`): means, spread, every seed kept."""

from __future__ import annotations

import math

import pytest

from pipeline.seeds import combine


def test_combine_gives_means_spread_and_every_seed():
    per_seed = {
        0: {"heat": {"bleu": 60.0, "steps": 400, "stopped_early": False, "checkpoint_uri": "a"},
            "softmax": {"bleu": 80.0, "steps": 400}},
        1: {"heat": {"bleu": 64.0, "steps": 300, "stopped_early": True, "checkpoint_uri": "b"},
            "softmax": {"bleu": 82.0, "steps": 400}},
        2: {"heat": {"bleu": 68.0, "steps": 400, "stopped_early": False, "checkpoint_uri": "c"},
            "softmax": {"bleu": 84.0, "steps": 400}},
    }
    heat = combine(per_seed)["heat"]
    assert heat["bleu"] == 64.0 and heat["bleu_sd"] == 4.0
    assert heat["bleu_min"] == 60.0 and heat["bleu_max"] == 68.0
    assert heat["bleu_ci95"] == pytest.approx(4.302653 * 4.0 / math.sqrt(3), rel=1e-3)
    assert heat["steps"] == pytest.approx(1100 / 3)
    assert "stopped_early" not in heat and "checkpoint_uri" not in heat  # not numbers
    assert heat["seeds"] == [0, 1, 2]
    assert heat["per_seed"]["1"]["checkpoint_uri"] == "b"
    assert list(combine(per_seed)) == ["heat", "softmax"]


def test_one_seed_has_no_interval():
    heat = combine({5: {"heat": {"accuracy": 0.8}}})["heat"]
    assert heat["accuracy"] == 0.8 and math.isnan(heat["accuracy_ci95"])
    assert math.isnan(heat["accuracy_sd"]) and heat["seeds"] == [5]

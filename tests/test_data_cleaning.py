"""Row cleaning rules, hash splits and duplicate resolution, as pure functions (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.data.cleaning import (
    CleaningRules,
    carve_split,
    clean_batch,
    content_key,
    count_reasons,
    drop_reason,
    normalize,
    resolve_duplicates,
)
from pipeline.data.schema import ClassificationSchema, TranslationSchema, work_schema

TRANSLATION = TranslationSchema("en", "fr")
CLASSIFICATION = ClassificationSchema("text", "label")
RULES = CleaningRules(normalization="NFKC", min_chars=2, max_chars=40, max_length_ratio=3.0,
                      num_labels=2, filter_test=False, seed=0, carve={})


def pair(src: str, tgt: str, split: str = "train") -> dict:
    return {"src": src, "tgt": tgt, "split": split, "drop_reason": None, "key": None}


def review(text: str, label: int, split: str = "train") -> dict:
    return {"text": text, "text_pair": None, "label": label, "split": split,
            "drop_reason": None, "key": None}


def test_normalize_applies_nfkc_and_collapses_whitespace():
    assert normalize("  \ufb01ne\tＡＢ \n caf\u0065\u0301 ", "NFKC") == "fine AB café"
    assert normalize("\ufb01ne  x", "none") == "\ufb01ne x"


@pytest.mark.parametrize("row, reason", [
    (pair("Hello there.", "Bonjour."), None),
    (pair("Hello \ufffd.", "Bonjour."), "undecodable"),
    (pair("Hello\x00.", "Bonjour."), "undecodable"),
    (pair("", "Bonjour."), "empty"),
    (pair("A", "B"), "too_short"),
    (pair("x" * 41, "y" * 40), "too_long"),
    (pair("Hi.", "Bonjour tout le monde."), "length_ratio"),
    # the test split keeps rows that only break length rules
    (pair("x" * 41, "y" * 40, "test"), None),
    (pair("Hi.", "Bonjour tout le monde.", "test"), None),
    (pair("", "Bonjour.", "test"), "empty"),
])
def test_translation_drop_reasons(row, reason):
    assert drop_reason(row, TRANSLATION, RULES) == reason


@pytest.mark.parametrize("row, reason", [
    (review("A fine film.", 1), None),
    (review("A fine film.", -1), "bad_label"),
    (review("A fine film.", 2), "bad_label"),
    (review("A fine film.", -1, "test"), "bad_label"),
    (review("", 0), "empty"),
    (review("x" * 100, 0), "too_long"),
])
def test_classification_drop_reasons(row, reason):
    assert drop_reason(row, CLASSIFICATION, RULES) == reason


def test_sentence_pairs_check_both_sides_but_not_their_length_ratio():
    schema = ClassificationSchema("sentence1", "label", "sentence2")
    row = {**review("Hi.", 1), "text_pair": "A much longer second sentence."}
    assert drop_reason(row, schema, RULES) is None
    assert drop_reason({**row, "text_pair": ""}, schema, RULES) == "empty"


def test_filter_test_applies_length_rules_to_test():
    rules = CleaningRules(**{**RULES.__dict__, "filter_test": True})
    assert drop_reason(pair("x" * 41, "y" * 40, "test"), TRANSLATION, rules) == "too_long"


def test_clean_batch_normalises_keys_and_keeps_load_time_drops():
    batch = pa.Table.from_pylist(
        [pair(" Hello   there. ", "Bonjour."),
         {**pair(None, None), "drop_reason": "malformed"}],
        schema=work_schema(TRANSLATION),
    )
    rows = clean_batch(batch, TRANSLATION, RULES).to_pylist()
    assert rows[0]["src"] == "Hello there." and rows[0]["drop_reason"] is None
    assert rows[0]["key"] == content_key(("Hello there.", "Bonjour."), 0)
    assert rows[1]["drop_reason"] == "malformed" and rows[1]["key"] is None


def test_carving_depends_only_on_content_and_follows_the_fractions():
    carve = {"validation": 0.1, "test": 0.2}
    keys = [content_key((f"sentence {i}",), seed=0) for i in range(5000)]
    splits = [carve_split(key, carve) for key in keys]
    assert splits == [carve_split(key, carve) for key in keys]
    assert abs(splits.count("validation") / 5000 - 0.1) < 0.02
    assert abs(splits.count("test") / 5000 - 0.2) < 0.02
    other_seed = [carve_split(content_key((f"sentence {i}",), seed=1), carve) for i in range(5000)]
    assert other_seed != splits


def test_clean_batch_carves_only_train_rows():
    rules = CleaningRules(**{**RULES.__dict__, "carve": {"test": 0.5}})
    rows = [pair(f"Sentence {i}.", f"Phrase {i}.") for i in range(200)]
    rows += [pair(f"Valid {i}.", f"Phrase {i}.", "validation") for i in range(20)]
    batch = pa.Table.from_pylist(rows, schema=work_schema(TRANSLATION))
    splits = clean_batch(batch, TRANSLATION, rules)["split"].to_pylist()
    assert set(splits[:200]) == {"train", "test"}
    assert splits[200:] == ["validation"] * 20


def resolve(rows: list[dict], schema=TRANSLATION, filter_test=False) -> list[tuple]:
    group = pa.Table.from_pylist(rows, schema=work_schema(schema))
    resolved = resolve_duplicates(group, filter_test).to_pylist()
    return sorted((r["split"], r["drop_reason"] or "kept") for r in resolved)


def test_duplicates_within_a_split_keep_one():
    assert resolve([pair("a b", "c d")] * 3) == [
        ("train", "duplicate"), ("train", "duplicate"), ("train", "kept")]


def test_train_and_validation_copies_of_evaluation_rows_are_overlap():
    rows = [pair("a b", "c d", "train"), pair("a b", "c d", "validation"),
            pair("a b", "c d", "test"), pair("a b", "c d", "test")]
    assert resolve(rows) == [("test", "kept"), ("test", "kept"),
                             ("train", "eval_overlap"), ("validation", "eval_overlap")]
    assert resolve(rows, filter_test=True) == [
        ("test", "duplicate"), ("test", "kept"), ("train", "eval_overlap"),
        ("validation", "eval_overlap")]


def test_conflicting_labels_keep_the_smallest():
    group = pa.Table.from_pylist([review("same", 1), review("same", 0)],
                                 schema=work_schema(CLASSIFICATION))
    resolved = resolve_duplicates(group, filter_test=False).to_pylist()
    assert [(r["label"], r["drop_reason"]) for r in resolved] == [(0, None), (1, "duplicate")]


def test_count_reasons_counts_kept_and_dropped_per_split():
    batch = pa.Table.from_pylist(
        [pair("a", "b"), {**pair("a", "b"), "drop_reason": "empty"}, pair("a", "b", "test")],
        schema=work_schema(TRANSLATION))
    counts = {(r["split"], r["reason"]): r["rows"] for r in count_reasons(batch).to_pylist()}
    assert counts == {("train", "kept"): 1, ("train", "empty"): 1, ("test", "kept"): 1}

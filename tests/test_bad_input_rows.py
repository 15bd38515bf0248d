"""Bad rows, as a family: whatever is wrong with one row, it is dropped and counted under a
reason (`pipeline.data.cleaning.DROP_REASONS`), never fatal.

The bulk are unit tests of the row conversion (`pipeline.data.rows`, no Ray); one real run of
the CLI, on a corpus that mixes good rows with one example of every bad kind in all three
formats and both schemas, shows the counts in the prepare stage's stats.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_input import heat_pipeline, tiny_config, write_yaml
from pipeline.data.cleaning import DROP_REASONS, CleaningRules, clean_batch
from pipeline.data.damage import file_rows, text_chunks
from pipeline.data.rows import (
    INT64_MAX,
    INT64_MIN,
    lines_to_rows,
    records_to_rows,
    rows_table,
    table_to_rows,
    value_problem,
)
from pipeline.data.schema import ClassificationSchema, TranslationSchema, work_schema

EN_FR = TranslationSchema("en", "fr")
REVIEWS = ClassificationSchema("text", "label")
PAIRS = ClassificationSchema("sentence1", "label", "sentence2")
GOOD_PAIR = b'{"translation": {"en": "A good row.", "fr": "Une bonne ligne."}}'
GOOD_REVIEW = b'{"text": "A good review.", "label": 1}'

# One JSONL line of every bad kind -> its drop reason (`None`: kept by the conversion).
TRANSLATION_LINES = [
    (rb'{"translation": {"en": "bad \ud800 row", "fr": "X"}}', "undecodable"),  # lone surrogate
    (rb'{"translation": {"en": "ok", "fr": "\udfff"}}', "undecodable"),  # low surrogate, target
    (b'{"translation": {"en": "caf\xe9", "fr": "x"}}', "undecodable"),  # Latin-1, not UTF-8
    (b'{"translation": {"en": "raw \x00 NUL", "fr": "x"}}', "malformed"),  # not JSON: raw control
    (b'{"translation": {"en": {"text": "nested"}, "fr": "x"}}', "malformed"),
    (b'{"translation": {"en": ["a", "list"], "fr": "x"}}', "malformed"),
    (b'{"translation": {"en": 42, "fr": "x"}}', "malformed"),
    (b'{"translation": {"en": null, "fr": "x"}}', "malformed"),
    (b'{"translation": {"en": "no target"}}', "malformed"),
    (b'{"translation": "not an object"}', "malformed"),
    (b'["a", "json", "array"]', "malformed"),
    (b"42", "malformed"),
    (b'"a json string"', "malformed"),
    (b"null", "malformed"),
    (b"true", "malformed"),
    (b"{not json", "malformed"),
    (b"[" * 100_000, "malformed"),  # RecursionError in json.loads
    (b'{"translation": {"en": "x", "fr": "y"}, "n": 1' + b"0" * 5000 + b"}", "malformed"),
]
CLASSIFICATION_LINES = [
    (b'{"text": "huge label", "label": 99999999999999999999}', "malformed"),
    (b'{"text": "just past int64", "label": 9223372036854775808}', "malformed"),
    (b'{"text": "below int64", "label": -9223372036854775809}', "malformed"),
    (b'{"text": "float label", "label": 1.0}', "malformed"),
    (b'{"text": "fraction label", "label": 0.5}', "malformed"),
    (b'{"text": "nan label", "label": NaN}', "malformed"),
    (b'{"text": "infinite label", "label": Infinity}', "malformed"),
    (b'{"text": "bool label", "label": true}', "malformed"),
    (b'{"text": "string label", "label": "1"}', "malformed"),
    (b'{"text": "null label", "label": null}', "malformed"),
    (b'{"text": "object label", "label": {"value": 1}}', "malformed"),
    (b'{"text": "no label"}', "malformed"),
    (b'{"text": {"nested": "object"}, "label": 1}', "malformed"),
    (b'{"text": null, "label": 1}', "malformed"),
    (rb'{"text": "lone \udfff surrogate", "label": 1}', "undecodable"),
]
TSV_TRANSLATIONS = [
    (b"only one field", "malformed"),
    (b"three\tfields\there", "malformed"),
    (b"caf\xe9\tcaf\xe9", "undecodable"),
    (b"\xed\xa0\x80 encoded surrogate\tx", "undecodable"),  # UTF-8 forbids encoded surrogates
]
TSV_REVIEWS = [
    (b"text\tlabel", "malformed"),  # a header line
    (b"underscore label\t1_0", "malformed"),
    (b"arabic digit label\t\xd9\xa3", "malformed"),
    (b"float label\t1.0", "malformed"),
    (b"huge label\t99999999999999999999", "malformed"),
    (b"three\tfields\t1", "malformed"),
    (b"no label at all", "malformed"),
]


def reasons(table: pa.Table) -> list[str | None]:
    return table["drop_reason"].to_pylist()


@pytest.mark.parametrize("line, reason", TRANSLATION_LINES, ids=range(len(TRANSLATION_LINES)))
def test_every_bad_jsonl_translation_line_is_one_counted_row(line, reason):
    table = lines_to_rows(b"\n".join([GOOD_PAIR, line, GOOD_PAIR]), "jsonl", EN_FR, "train")
    assert table.schema == work_schema(EN_FR)
    assert reasons(table) == [None, reason, None]
    assert table["src"].to_pylist() == ["A good row.", None, "A good row."]


@pytest.mark.parametrize("line, reason", CLASSIFICATION_LINES, ids=range(len(CLASSIFICATION_LINES)))
def test_every_bad_label_or_text_is_one_counted_row(line, reason):
    table = lines_to_rows(b"\n".join([GOOD_REVIEW, line]), "jsonl", REVIEWS, "test")
    assert reasons(table) == [None, reason]
    assert table["split"].to_pylist() == ["test", "test"]


def test_labels_at_the_int64_bounds_are_read_and_judged_by_cleaning():
    lines = [json.dumps({"text": "edge", "label": value}).encode()
             for value in (INT64_MIN, INT64_MAX, -1, 0)]
    table = lines_to_rows(b"\n".join(lines), "jsonl", REVIEWS, "train")
    assert table["label"].to_pylist() == [INT64_MIN, INT64_MAX, -1, 0]
    cleaned = clean_batch(table, REVIEWS, rules(num_labels=2))
    assert reasons(cleaned) == ["bad_label", "bad_label", "bad_label", None]


@pytest.mark.parametrize("schema, cases", [(EN_FR, TSV_TRANSLATIONS), (REVIEWS, TSV_REVIEWS)],
                         ids=["translation", "classification"])
def test_tsv_lines_with_wrong_fields_or_labels(schema, cases):
    good = b"Good text.\t1" if schema is REVIEWS else b"Good text.\tBon texte."
    lines = [good, *(line for line, _ in cases), good]
    table = lines_to_rows(b"\r\n".join(lines), "tsv", schema, "train")  # CRLF line ends
    assert reasons(table) == [None, *(reason for _, reason in cases), None]


def test_text_with_nul_or_control_characters_is_dropped_by_cleaning():
    lines = [rb'{"translation": {"en": "nul \u0000 inside", "fr": "x"}}',
             rb'{"translation": {"en": "bell \u0007", "fr": "x"}}',
             rb'{"translation": {"en": "replacement \ufffd", "fr": "x"}}', GOOD_PAIR]
    table = lines_to_rows(b"\n".join(lines), "jsonl", EN_FR, "train")
    assert reasons(table) == [None] * 4  # converted fine...
    cleaned = clean_batch(table, EN_FR, rules())
    assert reasons(cleaned) == ["undecodable"] * 3 + [None]  # ... and dropped by cleaning


def test_an_extremely_long_line_is_a_row_and_pieces_never_cut_a_line(tmp_path):
    long_line = json.dumps({"translation": {"en": "word " * 400_000, "fr": "x"}}).encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join([GOOD_PAIR, long_line, GOOD_PAIR, b"{not json"]))
    assert b"".join(text_chunks(str(path), "jsonl", "data.files.train", 1000)) == \
        path.read_bytes()
    assert all(c.endswith(b"\n") for c in list(text_chunks(str(path), "jsonl", "k", 1000))[:-1])
    tables = list(file_rows(pa.table({"path": [str(path)]}), "jsonl", EN_FR, "train"))
    table = pa.concat_tables(tables)
    assert reasons(table) == [None, None, None, "malformed"]
    assert reasons(clean_batch(table, EN_FR, rules(max_chars=1000)))[1] == "too_long"


def test_parquet_columns_of_the_wrong_type_or_null_are_dropped_rows():
    table = pa.table({
        "text": pa.array(["fine", None, "big label", "fine too", "binary"], pa.string()),
        "label": pa.array([0, 1, 2**64 - 1, 1, 0], pa.uint64()),  # beyond int64
        "extra": pa.array([2**62, 0, 0, 0, 0], pa.timestamp("s")),  # not Python-convertible
    })
    assert reasons(table_to_rows(table, REVIEWS, "train")) == [None, "malformed", "malformed",
                                                              None, None]
    wrong = pa.table({"text": pa.array([b"bytes", b"x"], pa.binary()),
                      "label": pa.array([0.0, float("nan")])})
    assert reasons(table_to_rows(wrong, REVIEWS, "train")) == ["malformed", "malformed"]
    bools = pa.table({"text": ["a"], "label": [True]})
    assert reasons(table_to_rows(bools, REVIEWS, "train")) == ["malformed"]
    assert reasons(table_to_rows(pa.table({"other": [1, 2]}), EN_FR, "train")) == \
        ["malformed", "malformed"]


def test_a_parquet_row_python_cannot_hold_costs_only_that_row():
    struct = pa.struct([("en", pa.string()), ("fr", pa.string()), ("when", pa.timestamp("s"))])
    table = pa.table({"translation": pa.array([
        {"en": "a", "fr": "b", "when": 0}, {"en": "c", "fr": "d", "when": 2**62},
        {"en": None, "fr": "e", "when": 0}, None], struct)})
    got = table_to_rows(table, EN_FR, "validation")
    assert reasons(got) == [None, "malformed", "malformed", "malformed"]
    assert got["src"].to_pylist() == ["a", None, None, None]


def test_records_of_any_shape_and_sentence_pairs():
    records = [{"sentence1": "a", "sentence2": "b", "label": 1},
               {"sentence1": "a", "sentence2": None, "label": 1},
               {"sentence1": "a", "sentence2": "\ud800", "label": 1},
               {"sentence1": "a", "sentence2": "b", "label": 2**63},
               ["not", "a", "dict"], "text", None, 3.5, {"sentence1": "a"}]
    assert reasons(records_to_rows(records, PAIRS, "train")) == [
        None, "malformed", "undecodable", "malformed", *["malformed"] * 5]


def test_the_value_check_and_the_last_resort_never_raise():
    assert value_problem({"src": "a", "tgt": "b"}, EN_FR) is None
    assert value_problem({"src": "a", "tgt": b"b"}, EN_FR) == "malformed"
    assert value_problem({"text": "a", "text_pair": None, "label": True}, REVIEWS) == "malformed"
    # a row that slipped past the checks: pyarrow refuses it, the batch survives without it
    sneaky = {"src": "a", "tgt": object(), "split": "train", "drop_reason": None, "key": None}
    fine = {"src": "a", "tgt": "b", "split": "train", "drop_reason": None, "key": None}
    assert reasons(rows_table([fine, sneaky, fine], EN_FR)) == [None, "malformed", None]


def test_every_reason_the_conversion_gives_is_documented():
    import pipeline.data.cleaning as cleaning

    given = {r for _, r in TRANSLATION_LINES + CLASSIFICATION_LINES + TSV_REVIEWS} - {None}
    assert given <= set(DROP_REASONS) and given <= cleaning.STRUCTURAL
    for reason in given:
        assert f"    {reason} " in cleaning.__doc__


def rules(**changes) -> CleaningRules:
    fields = dict(normalization="NFKC", min_chars=1, max_chars=None, max_length_ratio=None,
                  num_labels=2, filter_test=False, seed=0, carve={})
    return CleaningRules(**{**fields, **changes})


# ---------------------------------------------------------------------------------------------
# One real run: every bad kind, all three formats, both schemas


def sentences(prefix: str, n: int) -> list[str]:
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    return [f"{prefix} " + " ".join(words[(i + j) % 8] for j in range(3)) + f" {i}"
            for i in range(n)]


def write_lines(path: Path, good: list[bytes], bad: list[tuple[bytes, str]]) -> Counter:
    """Good lines with the bad ones spread among them; the drop reasons expected."""
    lines = list(good)
    for i, (line, _) in enumerate(bad):
        lines.insert(1 + (i * 7) % len(lines), line)  # never first: the probe sees good rows
    path.write_bytes(b"\n".join(lines) + b"\n")
    return Counter(reason for _, reason in bad)


def translation_corpus(folder: Path) -> tuple[dict[str, str], dict[str, Counter]]:
    folder.mkdir(parents=True)
    pair = lambda s: json.dumps({"translation": {"en": s, "fr": s.upper()}}).encode()  # noqa
    long_line = (pair("long " * 400_000), "too_long")  # 2 MB, over max_chars
    train = write_lines(folder / "train.jsonl", [pair(s) for s in sentences("train", 60)],
                        TRANSLATION_LINES + [long_line])
    valid = folder / "validation"  # a folder of Parquet files
    valid.mkdir()
    good = [{"translation": {"en": s, "fr": s.upper()}} for s in sentences("valid", 10)]
    extra = pa.array([10**16] + [0] * 11, pa.timestamp("ms"))  # year 318857: no Python
    # datetime holds it; a column nobody reads
    pq.write_table(pa.Table.from_pylist(good + [{"translation": {"en": None, "fr": "x"}},
                                                {"translation": None}]).append_column(
        "when", extra), valid / "part-0.parquet")
    struct = pa.struct([("en", pa.string()), ("fr", pa.string()), ("when", pa.timestamp("ms"))])
    pq.write_table(pa.table({"translation": pa.array(
        [{"en": s, "fr": s.upper(), "when": 0} for s in sentences("later", 3)]
        + [{"en": "x", "fr": "y", "when": 10**16}], struct)}), valid / "part-1.parquet")
    pq.write_table(pa.table({"translation": ["a string", "another"]}), valid / "part-2.parquet")
    test = write_lines(folder / "test.tsv", [f"{s}\t{s.upper()}".encode()
                                             for s in sentences("test", 10)],
                       TSV_TRANSLATIONS + [(b"\tno source", "empty")])
    files = {"train": folder / "train.jsonl", "validation": valid, "test": folder / "test.tsv"}
    return ({k: str(v) for k, v in files.items()},
            {"train": train, "validation": Counter(malformed=5), "test": test})


def classification_corpus(folder: Path) -> tuple[dict[str, str], dict[str, Counter]]:
    folder.mkdir(parents=True)
    review = lambda i, s: json.dumps({"text": s, "label": i % 2}).encode()  # noqa
    bad_labels = [(b'{"text": "unlabelled", "label": -1}', "bad_label"),
                  (b'{"text": "int64 min", "label": -9223372036854775808}', "bad_label")]
    train = write_lines(folder / "train.jsonl",
                        [review(i, s) for i, s in enumerate(sentences("review", 60))],
                        CLASSIFICATION_LINES + bad_labels)
    valid = folder / "validation"
    valid.mkdir()
    texts = sentences("valid review", 10)
    pq.write_table(pa.table({"text": pa.array(texts + [None, "huge"], pa.string()),
                             "label": pa.array([i % 2 for i in range(10)] + [1, 2**64 - 1],
                                               pa.uint64())}), valid / "part-0.parquet")
    pq.write_table(pa.table({"text": ["float", "labels"], "label": [0.0, 1.0]}),
                   valid / "part-1.parquet")
    test = write_lines(folder / "test.tsv", [f"{s}\t{i % 2}".encode() for i, s in
                                             enumerate(sentences("test review", 10))],
                       TSV_REVIEWS)
    files = {"train": folder / "train.jsonl", "validation": valid, "test": folder / "test.tsv"}
    return ({k: str(v) for k, v in files.items()},
            {"train": train, "validation": Counter(malformed=4), "test": test})


@pytest.fixture(scope="module")
def bad_rows_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_rows")
    translation_files, translation_drops = translation_corpus(folder / "translation")
    classification_files, classification_drops = classification_corpus(folder / "reviews")
    config = tiny_config(folder)
    task = config["tasks"]["translation"]
    task["data"]["files"] = translation_files
    reviews = json.loads(json.dumps(task))
    reviews["data"] = {"task": "classification", "source": "local", "files": classification_files}
    del reviews["model"]["num_decoder_layers"]
    reviews["tokenizer"] = {"vocab_size": 36}  # fewer distinct characters than translation
    reviews["eval"] = {}
    config["tasks"]["classification"] = reviews
    path = write_yaml(folder / "bad_rows.yaml", config)
    outcome = heat_pipeline("run", str(path), "--run-name", "bad-rows", cwd=folder)
    stats = {}
    for stats_file in (folder / "runs" / "prepare").glob("*/stats.json"):
        found = json.loads(stats_file.read_text())
        stats[found["task"]] = found
    return outcome, stats, {"translation": translation_drops,
                            "classification": classification_drops}


@pytest.mark.timeout(900)
def test_a_run_over_every_bad_row_kind_succeeds(bad_rows_run):
    outcome, _, _ = bad_rows_run
    assert outcome.returncode == 0, outcome.stderr[-5000:]
    # Ray Train's PlacementGroupCleaner actor prints a thread's traceback when other Ray
    # instances run on the machine ("Found multiple active Ray instances"): not this run's
    own = [line for line in (outcome.stdout + outcome.stderr).splitlines()
           if "(PlacementGroupCleaner pid=" not in line]
    assert not [line for line in own if "Traceback" in line], outcome.stderr[-5000:]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, kept", [
    ("translation", {"train": 60, "validation": 13, "test": 10}),
    ("classification", {"train": 60, "validation": 10, "test": 10}),
])
def test_the_drops_are_counted_per_split_and_reason_in_stats_json(bad_rows_run, task, kept):
    outcome, stats, expected = bad_rows_run
    assert outcome.returncode == 0, outcome.stderr[-5000:]
    assert stats[task]["rows"] == kept
    assert stats[task]["dropped"] == {
        split: {r: expected[task][split][r] for r in DROP_REASONS if r in expected[task][split]}
        for split in ("train", "validation", "test")}

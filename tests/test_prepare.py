"""The prepare stage on a real local Ray instance: the data config's checks, every drop reason
counted, deterministic hash splits, the output files, and the empty-corpus error."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from heat.validation import ConfigError
from pipeline.configtools import build
from pipeline.config import DataConfig
from pipeline.stages.prepare import load_prepare_result, run_prepare


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("raw, message", [
    ({"source": "builtin"}, "data.builtin: is required with source builtin"),
    ({"source": "builtin", "builtin": "toy_sentiment"},
     "data.builtin: 'toy_sentiment' is a classification corpus, but task is 'translation'"),
    ({"source": "local"}, "data.files.train: is required"),
    ({"source": "local", "files": {"train": "a", "dev": "b"}},
     "data.files.dev: must be one of train, validation, test; got 'dev'"),
    ({"source": "hub"}, "data.hub_id: is required with source hub"),
    ({"source": "hub", "hub_id": "x/y", "hub_splits": {"test": "test"}},
     "data.hub_splits.train: is required"),
    ({"source": "builtin", "builtin": "toy_translation", "files": {"train": "a"}},
     "data.files: is only used with source local"),
    ({"source": "builtin", "builtin": "toy_translation", "validation_fraction": 0.7},
     "data.validation_fraction: must be a number in (0.0, 0.5], got 0.7"),
    ({"source": "builtin", "builtin": "toy_translation", "min_chars": 5, "max_chars": 4},
     "data.max_chars: must be an integer >= 5, got 4"),
    ({"source": "builtin", "builtin": "toy_translation", "max_length_ratio": 0.5},
     "data.max_length_ratio: must be a number in (1.0, inf], got 0.5"),
    ({"source": "builtin", "builtin": "toy_translation", "tgt_lang": "en"},
     "data.tgt_lang: must differ from src_lang, got 'en'"),
    ({"source": "builtin", "builtin": "toy_translation", "format": "csv"},
     "data.format: must be one of 'auto', 'jsonl', 'tsv', 'parquet'; got 'csv'"),
    ({"source": "builtin", "builtin": "toy_translation", "shuffle": True},
     "data.shuffle: unknown key"),
])
def test_data_config_rejects_bad_values_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as error:
        build(DataConfig, {"task": "translation", **raw}, "data")
    assert str(error.value).startswith(message)


def jsonl(path: Path, lines: list) -> Path:
    """Each entry: a (src, tgt) pair, a raw str line, or raw bytes."""
    encoded = []
    for line in lines:
        if isinstance(line, tuple):
            line = json.dumps({"translation": {"en": line[0], "fr": line[1]}}, ensure_ascii=False)
        encoded.append(line if isinstance(line, bytes) else line.encode())
    path.write_bytes(b"\n".join(encoded) + b"\n")
    return path


def read_split(out: Path, split: str) -> list[dict]:
    """A written split in file order (file names carry the block order)."""
    return pq.ParquetDataset(out / f"{split}.parquet").read().to_pylist()


def test_every_drop_reason_is_counted(tmp_path):
    good = [(f"Good sentence {i}.", f"Bonne phrase {i}.") for i in range(10)]
    tests = [(f"Test sentence {i}.", f"Phrase de test {i}.") for i in range(4)]
    train = jsonl(tmp_path / "train.jsonl", good + [
        good[0], good[0],                                       # duplicate x2
        ("  Good   sentence 1. ", "Bonne phrase 1."),           # duplicate after whitespace
        ("\uff27ood sentence 1.", "Bonne phrase 1."),           # duplicate after NFKC
        "{not json", '{"translation": {"en": "no target"}}',    # malformed x2
        b'{"translation": {"en": "caf\xe9", "fr": "x"}}',       # undecodable (not UTF-8)
        ("Broken \ufffd text.", "Texte."),                      # undecodable (U+FFFD)
        ("   ", "Vide."),                                       # empty
        ("Hi", "Salut."),                                       # too_short (min_chars 3)
        ("x" * 61, "y" * 60),                                   # too_long (max_chars 60)
        ("Yes.", "Oui, bien sur, absolument certain."),         # length_ratio
        tests[0],                                               # eval_overlap
    ])
    validation = jsonl(tmp_path / "validation.jsonl",
                       [(f"Valid {i}.", f"Valide {i}.") for i in range(3)] + [tests[1]])
    test = jsonl(tmp_path / "test.jsonl",
                 tests + [tests[2], ("x" * 61, "y" * 60), ("", "Rien.")])
    cfg = DataConfig(task="translation", source="local", min_chars=3, max_chars=60,
                     files={"train": str(train), "validation": str(validation),
                            "test": str(test)})
    result = run_prepare(cfg, str(tmp_path / "out"))

    assert result.rows == {"train": 10, "validation": 3, "test": 6}
    assert result.dropped == {
        "train": {"duplicate": 4, "malformed": 2, "undecodable": 2, "empty": 1,
                  "too_short": 1, "too_long": 1, "length_ratio": 1, "eval_overlap": 1},
        "validation": {"eval_overlap": 1},
        "test": {"empty": 1},  # the test split keeps duplicates and long rows
    }
    train_rows = read_split(tmp_path / "out", "train")
    assert sorted(r["src"] for r in train_rows) == sorted(src for src, _ in good)
    assert list(train_rows[0]) == ["src", "tgt"]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats == {"task": "translation", "rows": result.rows, "dropped": result.dropped}
    assert load_prepare_result(str(tmp_path / "out")) == result


def test_classification_tsv_with_bad_labels_and_carved_splits(tmp_path):
    lines = ["sentence\tlabel"]  # a header is not a row: malformed
    lines += [f"Review number {i} was fine.\t{i % 2}" for i in range(60)]
    lines += ["Unlabelled review.\t-1", "Too many classes.\t5", "three\tcolumns\t1"]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(task="classification", source="local", files={"train": str(path)},
                     validation_fraction=0.2, test_fraction=0.2)
    result = run_prepare(cfg, str(tmp_path / "out"))

    assert sum(result.rows.values()) == 60 and min(result.rows.values()) > 0
    assert sum(result.dropped[s].get("bad_label", 0) for s in result.dropped) == 2
    assert result.dropped["train"]["malformed"] == 2
    rows = read_split(tmp_path / "out", "test")
    assert list(rows[0]) == ["text", "text_pair", "label"]
    assert all(r["text_pair"] is None and r["label"] in (0, 1) for r in rows)


def test_builtin_translation_corpus_prepares_three_splits(tmp_path):
    cfg = DataConfig(task="translation", source="builtin", builtin="toy_translation",
                     builtin_size=600)
    result = run_prepare(cfg, str(tmp_path / "out"))
    assert sum(result.rows.values()) == 600  # distinct, clean rows: nothing dropped
    assert 0.02 < result.rows["validation"] / 600 < 0.09
    assert 0.02 < result.rows["test"] / 600 < 0.09
    assert all(not reasons for reasons in result.dropped.values())


@pytest.mark.slow
def test_splits_and_order_depend_only_on_the_rows(tmp_path):
    """The same rows, once in one file and once reversed and spread over three files (so read
    in another order and partitioning), give the same splits in the same order."""
    pairs = [(f"Sentence number {i}.", f"Phrase numero {i}.") for i in range(300)]
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        jsonl(parts / f"part-{i}.jsonl", pairs[::-1][i::3])
    sources = {"one": jsonl(tmp_path / "train.jsonl", pairs), "parts": parts}

    outputs = []
    for name, path in sources.items():
        cfg = DataConfig(task="translation", source="local", files={"train": str(path)})
        run_prepare(cfg, str(tmp_path / name), num_cpus=2)
        outputs.append({split: read_split(tmp_path / name, split)
                        for split in ("train", "validation", "test")})
    assert outputs[0] == outputs[1]
    assert sum(len(rows) for rows in outputs[0].values()) == 300
    assert all(outputs[0][split] for split in ("validation", "test"))


def test_a_corpus_with_nothing_left_is_an_error_naming_the_file(tmp_path):
    path = jsonl(tmp_path / "train.jsonl", [(f"{i} " + "x" * 80, "y" * 80) for i in range(5)])
    cfg = DataConfig(task="translation", source="local", files={"train": str(path)},
                     max_chars=50)
    with pytest.raises(ConfigError, match=r"^data\.files\.train: empty corpus: no train rows "
                                          r"left after cleaning .*too_long 5"):
        run_prepare(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()

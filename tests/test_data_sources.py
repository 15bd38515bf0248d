"""Reading sources on a real local Ray instance: local files in both schemas and all three
formats, malformed and undecodable lines, and the errors for missing, empty or wrongly shaped
files and for an unreachable hub."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from heat.validation import ConfigError
from pipeline.config import DataConfig
from pipeline.data.readers import read_source
from pipeline.data.sources import check_source

TRANSLATIONS = [{"translation": {"en": f"Hello {i}.", "fr": f"Bonjour {i}."}} for i in range(5)]
REVIEWS = [{"text": f"Review number {i}.", "label": i % 2} for i in range(5)]
PAIRS = [{"sentence1": f"First {i}.", "sentence2": f"Second {i}.", "label": i % 2}
         for i in range(5)]


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def write(path: Path, records: list[dict], fmt: str) -> Path:
    """Records in the HF schema, as JSONL, TSV (their values, in order) or Parquet."""
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif fmt == "tsv":
        path.write_text("".join("\t".join(map(str, flat(r))) + "\n" for r in records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def flat(record: dict) -> list:
    if "translation" in record:
        return list(record["translation"].values())
    return list(record.values())


def local(task: str, files: dict[str, Path], **fields) -> DataConfig:
    return DataConfig(task=task, source="local", files={k: str(v) for k, v in files.items()},
                      **fields)


def rows(cfg: DataConfig) -> list[dict]:
    """The source's rows, sorted by their text (Ray does not promise an order)."""
    text = "src" if cfg.task == "translation" else "text"
    return sorted(read_source(cfg).take_all(), key=lambda r: (str(r[text]), r["split"]))


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "parquet"])
def test_translation_files_in_every_format(tmp_path, fmt):
    path = write(tmp_path / f"train.{fmt}", TRANSLATIONS, fmt)
    got = rows(local("translation", {"train": path}))
    assert [(r["src"], r["tgt"], r["split"], r["drop_reason"]) for r in got] == [
        (f"Hello {i}.", f"Bonjour {i}.", "train", None) for i in range(5)]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "parquet"])
def test_classification_files_in_every_format(tmp_path, fmt):
    path = write(tmp_path / f"test.{fmt}", REVIEWS, fmt)
    got = rows(local("classification", {"train": path, "test": path}))
    assert len(got) == 10 and {r["split"] for r in got} == {"train", "test"}
    assert sorted({(r["text"], r["text_pair"], r["label"]) for r in got}) == [
        (f"Review number {i}.", None, i % 2) for i in range(5)]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_sentence_pairs_with_named_fields(tmp_path, fmt):
    path = write(tmp_path / f"train.{fmt}", PAIRS, fmt)
    cfg = local("classification", {"train": path}, text_field="sentence1",
                pair_field="sentence2")
    assert [(r["text"], r["text_pair"], r["label"]) for r in rows(cfg)] == [
        (f"First {i}.", f"Second {i}.", i % 2) for i in range(5)]


def test_compressed_jsonl_and_explicit_format(tmp_path):
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in TRANSLATIONS).encode()))
    assert len(rows(local("translation", {"train": gz}))) == 5
    txt = write(tmp_path / "corpus.txt", TRANSLATIONS, "tsv")
    with pytest.raises(ConfigError, match=r"data\.format: cannot tell the format of .*corpus"):
        check_source(local("translation", {"train": txt}))
    assert len(rows(local("translation", {"train": txt}, format="tsv"))) == 5


def test_a_folder_of_files_is_one_split(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    write(folder / "part-0.jsonl", TRANSLATIONS[:2], "jsonl")
    write(folder / "part-1.jsonl", TRANSLATIONS[2:], "jsonl")
    assert len(rows(local("translation", {"train": folder}))) == 5


def test_malformed_and_undecodable_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(TRANSLATIONS[0]).encode(),
        b"{not json",
        json.dumps({"translation": {"en": "only english"}}).encode(),
        b"[1, 2, 3]",
        b"",  # blank lines are not rows
        b'{"translation": {"en": "caf\xe9", "fr": "x"}}',  # Latin-1, not UTF-8
        json.dumps(TRANSLATIONS[1]).encode(),
    ]) + b"\n")
    reasons = Counter(r["drop_reason"] for r in rows(local("translation", {"train": path})))
    assert reasons == {"malformed": 3, "undecodable": 1, None: 2}


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "parquet"])
def test_wrong_schema_names_the_file_the_schema_and_the_first_row(tmp_path, fmt):
    flat_pairs = [{"en": f"Hello {i}.", "fr": f"Bonjour {i}.", "id": i} for i in range(3)]
    path = write(tmp_path / f"train.{fmt}", flat_pairs, fmt)
    with pytest.raises(ConfigError) as error:
        check_source(local("translation", {"train": path}))
    message = str(error.value)
    assert message.startswith("data.files.train: ") and str(path) in message
    assert '{"translation": {"en": <text>, "fr": <text>}}' in message
    assert "Hello 0." in message  # what the first row looked like


def test_labels_that_are_not_integers_are_a_wrong_schema(tmp_path):
    path = write(tmp_path / "train.jsonl", [{"text": "Fine.", "label": "positive"}], "jsonl")
    with pytest.raises(ConfigError, match=r'"label": <integer>.*first row is \{.text'):
        check_source(local("classification", {"train": path}))


def test_missing_file_names_the_key_and_the_path(tmp_path):
    train = write(tmp_path / "train.jsonl", TRANSLATIONS, "jsonl")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError,
                       match=rf"^data\.files\.validation: file not found: {missing}$"):
        check_source(local("translation", {"train": train, "validation": missing}))


def test_empty_file_and_empty_folder(tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match=rf"data\.files\.train: {empty} is empty"):
        check_source(local("translation", {"train": empty}))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="empty directory"):
        check_source(local("translation", {"train": tmp_path / "folder"}))


def test_builtin_source_reads_the_generated_rows():
    cfg = DataConfig(task="translation", source="builtin", builtin="toy_translation",
                     builtin_size=50)
    got = read_source(cfg).take_all()
    assert len(got) == 50 and {r["split"] for r in got} == {"train"}


HUB = DataConfig(task="translation", source="hub", hub_id="wmt/wmt14", hub_config="fr-en")


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_at_once_and_points_to_local_files(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConfigError) as error:
        read_source(HUB)
    message = str(error.value)
    assert message.startswith("data.hub_id: cannot reach the HuggingFace hub")
    assert "'wmt/wmt14'" in message and "`data.source: local`" in message
    assert "data.files" in message and '{"translation": {"en": <text>, "fr": <text>}}' in message


@pytest.mark.timeout(60)
def test_offline_hub_without_a_cached_copy_fails_at_once(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^data\.hub_id: cannot load 'wmt/wmt14' .*"
                                          r"HF_HUB_OFFLINE is set.*`data\.source: local`"):
        read_source(HUB)

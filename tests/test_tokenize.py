"""The tokenize stage with real SentencePiece on a real local Ray instance: spec loading and its
errors, truncation, lossless round trips on the built-in corpora, the model shipped as bytes,
and the vocabulary-too-large error."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import sentencepiece as spm

from heat.validation import ConfigError
from pipeline.config import DataConfig, TokenizerSpec, load_tokenizer_spec, spec_names
from pipeline.config.data import TOKENIZER_DIR
from pipeline.data.encoding import SentencePieceEncoder, pair_with_eos, with_eos
from pipeline.stages.prepare import run_prepare
from pipeline.stages.tokenize import (
    load_tokenize_result,
    run_tokenize,
    sample_sentences,
    train_model,
)

SPLITS = ("train", "validation", "test")
TRANSLATION = DataConfig(task="translation", source="builtin", builtin="toy_translation")
SENTIMENT = DataConfig(task="classification", source="builtin", builtin="toy_sentiment",
                       builtin_size=600)


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def translation(ray_local, tmp_path_factory):
    """The smoke run's translation data: prepared, then tokenized with the shipped spec."""
    root = tmp_path_factory.mktemp("translation")
    run_prepare(TRANSLATION, str(root / "prepared"))
    result = run_tokenize(load_tokenizer_spec("smoke_translation"), TRANSLATION,
                          str(root / "prepared"), str(root / "tokens"), max_tokens=64)
    return root, result


def read(path: Path) -> list[dict]:
    return pq.ParquetDataset(path).read().to_pylist()


# --- specs -------------------------------------------------------------------------------------

def test_the_shipped_specs_all_load():
    assert {"smoke_translation", "smoke_classification", "wmt14_en_fr", "iwslt15_en_vi", "imdb",
            "yelp_polarity", "glue_sst2"} <= set(spec_names())
    for name in spec_names():
        spec = load_tokenizer_spec(name)
        assert (spec.pad_id, spec.bos_id, spec.eos_id, spec.unk_id) == (0, 1, 2, 3)


def test_specs_load_by_path_and_inline():
    path = str(TOKENIZER_DIR / "smoke_translation.yaml")
    assert load_tokenizer_spec(path) == load_tokenizer_spec("smoke_translation")
    assert load_tokenizer_spec({"model_type": "bpe", "vocab_size": 500}) == TokenizerSpec(
        model_type="bpe", vocab_size=500)


def test_unknown_spec_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^tokenizer: no tokenizer spec 'nope': .*nope\.yaml "
                                          r"does not exist; known specs: .*smoke_translation"):
        load_tokenizer_spec("nope")


@pytest.mark.parametrize("text, message", [
    ("vocab_size: 0\n", "tokenizer.vocab_size: must be an integer >= 5, got 0"),
    ("vocabulary: 100\n", "tokenizer.vocabulary: unknown key"),
    ("model_type: wordpiece\n", "tokenizer.model_type: must be one of 'unigram', 'bpe'"),
    ("byte_fallback: true\nvocab_size: 200\n",
     "tokenizer.vocab_size: must exceed 260 with byte_fallback"),
    ("pad_id: 1\n", "tokenizer.pad_id: the special ids must be distinct"),
    ("user_defined_symbols: ['<br />']\n",
     "tokenizer.user_defined_symbols[0]: must be non-empty without whitespace"),
])
def test_bad_spec_files_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_tokenizer_spec(str(path))
    assert str(error.value).startswith(message) and str(error.value).endswith(f"(in {path})")


# --- truncation --------------------------------------------------------------------------------

def test_with_eos_cuts_to_max_tokens_including_eos():
    assert with_eos([5, 6, 7], 8, 2) == ([5, 6, 7, 2], False)
    assert with_eos([5, 6, 7], 4, 2) == ([5, 6, 7, 2], False)
    assert with_eos([5, 6, 7], 3, 2) == ([5, 6, 2], True)


def test_pairs_are_cut_longest_first():
    assert pair_with_eos([5, 6], [7], 8, 2) == ([5, 6, 2, 7, 2], [0, 0, 0, 1, 1], False)
    ids, segments, cut = pair_with_eos(list(range(10, 20)), [7, 8], 8, 2)
    assert (ids, cut) == ([10, 11, 12, 13, 2, 7, 8, 2], True)
    assert segments == [0] * 5 + [1] * 3
    ids, _, _ = pair_with_eos(list(range(10, 20)), list(range(30, 40)), 8, 2)
    assert ids == [10, 11, 12, 2, 30, 31, 32, 2]


# --- the model travels as bytes ----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model() -> bytes:
    """A model trained in memory: it never exists as a file."""
    sentences = [f"the {w} saw a {v} near the river ." for w in ("cat", "dog", "bird", "fish")
                 for v in ("tree", "house", "boat")] * 20
    return train_model(TokenizerSpec(vocab_size=25), iter(sentences), num_threads=1)


def test_a_vocabulary_below_the_alphabet_names_the_characters_needed():
    sentences = ["the cat saw a tree near the river ."] * 20
    with pytest.raises(ConfigError, match=r"^tokenizer\.vocab_size: 10 is below the \d+ "
                                          r"characters that character_coverage=1\.0 keeps"):
        train_model(TokenizerSpec(vocab_size=10), iter(sentences), num_threads=1)


def test_the_encoder_takes_the_model_bytes_not_a_path(tmp_path, small_model):
    path = tmp_path / "spm.model"
    path.write_bytes(small_model)
    with pytest.raises(TypeError, match="model_proto must be the model's bytes"):
        SentencePieceEncoder(str(path), "translation", 16)


def test_encoding_on_ray_workers_from_bytes_with_sentence_pairs(ray_local, small_model):
    batch = pa.table({"text": ["the cat saw a tree .", "the dog"],
                      "text_pair": ["a boat near the river .", None],
                      "label": pa.array([1, 0], pa.int64()), "split": ["train", "test"]})
    encoder = {"model_proto": small_model, "task": "classification", "max_tokens": 64}
    rows = ray.data.from_arrow(batch).map_batches(
        SentencePieceEncoder, fn_constructor_kwargs=encoder, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    processor = spm.SentencePieceProcessor(model_proto=small_model)
    first = processor.encode("the cat saw a tree .") + [2]
    second = processor.encode("a boat near the river .") + [2]
    assert list(rows[0]["input_ids"]) == first + second
    assert list(rows[0]["segment_ids"]) == [0] * len(first) + [1] * len(second)
    assert list(rows[1]["segment_ids"]) == [0] * len(rows[1]["input_ids"])
    assert [(r["label"], r["split"], r["truncated"]) for r in rows] == [
        (1, "train", False), (0, "test", False)]


# --- the stage ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_translation_round_trips_exactly_with_eos_and_ids_in_range(translation):
    root, result = translation
    assert result.vocab_size == load_tokenizer_spec("smoke_translation").vocab_size
    processor = spm.SentencePieceProcessor(model_proto=result.model_proto)
    for split in SPLITS:
        prepared = read(root / "prepared" / f"{split}.parquet")
        tokens = read(root / "tokens" / f"{split}.parquet")
        assert len(tokens) == len(prepared) == result.rows[split]
        for source, row in zip(prepared, tokens):
            for ids, text in ((row["src_ids"], source["src"]), (row["tgt_ids"], source["tgt"])):
                assert ids[-1] == result.eos_id and result.eos_id not in ids[:-1]
                assert all(3 <= i < result.vocab_size for i in ids[:-1])  # no pad/bos/eos/unk
                assert processor.decode(ids[:-1]) == text
            assert row["ref"] == source["tgt"]
    assert result.truncated == {split: 0 for split in SPLITS}


@pytest.mark.slow
def test_the_training_sample_is_bounded_deterministic_and_joint(translation):
    root, _ = translation
    train = ray.data.read_parquet(str(root / "prepared" / "train.parquet"))
    spec = TokenizerSpec(input_sentence_size=100)
    sample = list(sample_sentences(train, TRANSLATION.schema(), spec))
    assert 50 < len(sample) <= 100
    assert set(sample) == set(sample_sentences(train, TRANSLATION.schema(), spec))
    english = {r["src"] for r in read(root / "prepared" / "train.parquet")}
    assert 0 < len(english & set(sample)) < len(sample)  # source and target sentences


@pytest.mark.slow
def test_model_files_and_summary_are_written(translation):
    root, result = translation
    assert (root / "tokens" / "spm.model").read_bytes() == result.model_proto
    vocab = (root / "tokens" / "spm.vocab").read_text().splitlines()
    assert len(vocab) == result.vocab_size and vocab[0].startswith("<pad>\t")
    assert load_tokenize_result(str(root / "tokens")) == result
    assert list(read(root / "tokens" / "test.parquet")[0]) == ["src_ids", "tgt_ids", "ref"]


@pytest.mark.slow
def test_classification_truncation_is_counted(ray_local, tmp_path):
    run_prepare(SENTIMENT, str(tmp_path / "prepared"))
    spec = TokenizerSpec(vocab_size=100)
    result = run_tokenize(spec, SENTIMENT, str(tmp_path / "prepared"), str(tmp_path / "tokens"),
                          max_tokens=12)
    processor = spm.SentencePieceProcessor(model_proto=result.model_proto)
    for split in SPLITS:
        prepared = read(tmp_path / "prepared" / f"{split}.parquet")
        tokens = read(tmp_path / "tokens" / f"{split}.parquet")
        expected = sum(len(processor.encode(r["text"])) + 1 > 12 for r in prepared)
        assert result.truncated[split] == expected > 0
        for source, row in zip(prepared, tokens):
            assert len(row["input_ids"]) <= 12 and row["input_ids"][-1] == result.eos_id
            assert row["segment_ids"] == [0] * len(row["input_ids"])
            assert row["label"] == source["label"]
            assert processor.decode(row["input_ids"][:-1]) in source["text"]


@pytest.mark.slow
def test_a_vocabulary_too_large_for_the_corpus_fails_before_encoding(translation, tmp_path):
    root, _ = translation
    with pytest.raises(ConfigError, match=r"^tokenizer\.vocab_size: 5000 is more than this corpus "
                                          r"allows: SentencePiece \(unigram\) reports a maximum "
                                          r"of \d+"):
        run_tokenize(TokenizerSpec(vocab_size=5000), TRANSLATION, str(root / "prepared"),
                     str(tmp_path / "tokens"), max_tokens=64)
    assert not (tmp_path / "tokens").exists()

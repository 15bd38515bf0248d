"""Scores, decoding helpers and EvalConfig of the evaluate stage (pipeline.stages.evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import torch

from heat.models import ClassifierConfig, EncoderClassifier, Seq2SeqConfig, Seq2SeqTransformer
from heat.validation import ConfigError
from pipeline.batching import load_rank_rows
from pipeline.configtools import build
from pipeline.config import EvalConfig
from pipeline.stages.evaluate import (
    accuracy,
    classification_scores,
    classify,
    detokenize,
    macro_f1,
    translate,
    translation_scores,
)
from toy_tasks import write_translation


def test_accuracy_and_macro_f1_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp 2 fp 0 fn 1 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 2/4; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    assert macro_f1(predictions, labels, 3) == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)


def test_macro_f1_counts_a_never_predicted_class_as_zero_and_skips_absent_ones():
    labels = np.array([0, 0, 1, 1])
    always_zero = np.zeros(4, dtype=int)
    assert macro_f1(always_zero, labels, 2) == pytest.approx((2 * 2 / (2 * 2 + 2) + 0.0) / 2)
    # class 2 neither occurs nor is predicted: it is left out, not counted as 0 or 1.
    assert macro_f1(labels, labels, 3) == 1.0


def test_macro_f1_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    expected = metrics.f1_score(labels, predictions, average="macro")
    assert macro_f1(predictions, labels, 4) == pytest.approx(expected)
    scores = classification_scores(predictions, labels, 4)
    assert scores["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions))


def test_scores_of_an_empty_set_are_an_error():
    with pytest.raises(ValueError, match="empty"):
        accuracy(np.array([]), np.array([]))


def test_translation_scores_carry_sacrebleu_signatures():
    scores = translation_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["bleu_signature"].startswith("nrefs:1|") and "tok:13a" in scores["bleu_signature"]
    assert "nc:6" in scores["chrf_signature"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"beam_size": 0}, "eval.beam_size"),
        ({"split": "train"}, "eval.split"),
        ({"length_penalty": -1}, "eval.length_penalty"),
        ({"batch_size": "8"}, "eval.batch_size"),
        ({"max_length_ratio": 0, "max_length_offset": 0}, "eval.max_length_offset"),
        ({"beams": 4}, "eval.beams"),
    ],
)
def test_bad_eval_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as error:
        build(EvalConfig, raw, "eval")
    assert str(error.value).startswith(key)


def test_decode_length_follows_the_source_and_stops_at_the_model_limit():
    config = EvalConfig(max_length_ratio=1.5, max_length_offset=4)
    assert config.decode_length(10, 64) == 19
    assert config.decode_length(100, 64) == 64


@pytest.fixture(scope="module")
def toy_test_split(tmp_path_factory) -> tuple[bytes, Path]:
    folder = tmp_path_factory.mktemp("toy")
    return write_translation(folder, {"test": 9}), folder


def test_translate_returns_one_hypothesis_per_example_in_order(toy_test_split):
    proto, folder = toy_test_split
    examples = load_rank_rows([pq.read_table(folder / "test.parquet")], "translation", 0, 1,
                              keep_refs=True)
    torch.manual_seed(0)
    vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=vocab, d_model=16, num_heads=2,
                                             num_encoder_layers=1, num_decoder_layers=1,
                                             ffn_dim=32, max_length=32))
    config = EvalConfig(beam_size=2, batch_size=4, max_length_offset=3, max_length_ratio=0.5)
    hypotheses = translate(model, examples, config, torch.device("cpu"))
    assert len(hypotheses) == len(examples) == 9
    longest = config.decode_length(int(examples.src.lengths.max()), 32)
    for tokens in hypotheses:
        assert len(tokens) <= longest  # each batch decodes for its own longest source
        assert not {0, 1, 2} & set(tokens)  # no pad, bos or eos in a hypothesis
    texts = detokenize(proto, hypotheses)
    assert len(texts) == 9 and all(isinstance(t, str) for t in texts)
    assert detokenize(proto, [examples.tgt[0][:-1].tolist()]) == [examples.refs[0]]


def test_classify_predicts_a_class_per_example():
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    table = pa.table({"input_ids": pa.array([[4, 5, 2], [6, 2], [7, 7, 7, 2]], ids),
                      "segment_ids": pa.array([[0, 0, 0], [0, 0], [0, 0, 0, 0]], ids),
                      "label": pa.array([1, 0, 2], pa.int64())})
    examples = load_rank_rows([table], "classification", 0, 1)
    model = EncoderClassifier(ClassifierConfig(vocab_size=10, num_classes=3, d_model=16,
                                               num_heads=2, num_encoder_layers=1, ffn_dim=32))
    predictions = classify(model, examples, EvalConfig(batch_size=2), torch.device("cpu"))
    assert predictions.shape == (3,) and set(predictions.tolist()) <= {0, 1, 2}

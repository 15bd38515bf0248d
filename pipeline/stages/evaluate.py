"""The evaluate stage: decoding and scoring, run on the training workers at the end of a variant.

Translation: batched beam search (`heat.decoding`), detokenized with the run's SentencePiece
model, scored with sacrebleu's corpus BLEU and chrF, signatures included. Classification:
argmax predictions, accuracy and macro-averaged F1.

Each rank decodes its own share of the evaluation split (rows position % world == rank, see
`pipeline.batching.RankRows`) and rank 0 gathers and scores: beam search is the costly part
and splits evenly, while the gathered token lists are small. Nothing here imports Ray; the
functions also score a model in a plain process (tests compare against an untrained model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sacrebleu
import sentencepiece as spm
import torch

from heat.decoding import beam_search
from heat.models import EncoderClassifier, Seq2SeqTransformer
from heat.validation import ConfigError, check_int
from pipeline.batching import ClassificationExamples, TranslationExamples


def _check_range(field: str, value: Any, low: float, high: float) -> None:
    """A finite number in [low, high] (check_float's interval is open at the bottom)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ConfigError(field, f"must be a number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How the trained (best-validation) model of each variant is evaluated."""

    split: Literal["test", "validation"] = "test"
    """Split to score; GLUE's test labels are hidden, so its configs evaluate on validation."""
    max_examples: int = 0
    """Score only the first N rows of the split (0: all)."""
    batch_size: int = 64
    """Sentences per decoding batch (per rank); beam search multiplies it by beam_size."""
    beam_size: int = 4
    """Translation: beams per sentence; 1 is greedy decoding."""
    length_penalty: float = 0.6
    """Translation: GNMT length-penalty exponent alpha; 0 ranks hypotheses by raw log-prob."""
    max_length_ratio: float = 1.5
    """Translation: decode at most ratio x (longest source in the batch) + offset tokens ..."""
    max_length_offset: int = 10
    """... capped at the model's max_length."""

    def __post_init__(self) -> None:
        check_int("max_examples", self.max_examples, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("beam_size", self.beam_size, 1, 64)
        _check_range("length_penalty", self.length_penalty, 0.0, 10.0)
        _check_range("max_length_ratio", self.max_length_ratio, 0.0, 100.0)
        check_int("max_length_offset", self.max_length_offset, 0)
        if self.max_length_ratio == 0 and self.max_length_offset == 0:
            raise ConfigError("max_length_offset", "must be >= 1 when max_length_ratio is 0")

    def decode_length(self, longest_source: int, model_max_length: int) -> int:
        wanted = math.ceil(self.max_length_ratio * longest_source) + self.max_length_offset
        return max(1, min(model_max_length, wanted))


# ---------------------------------------------------------------------------------------------
# Predictions on this rank's rows


def _length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Sentences of similar length together (less padding), at most batch_size each."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def translate(
    model: Seq2SeqTransformer,
    examples: TranslationExamples,
    config: EvalConfig,
    device: torch.device,
) -> list[list[int]]:
    """Beam-search token ids (no bos/eos/pad) for every example, in the examples' order."""
    model.eval()
    pad_id = model.config.pad_id
    hypotheses: list[list[int]] = [[] for _ in range(len(examples))]
    for batch in _length_sorted_batches(examples.src.lengths, config.batch_size):
        src = examples.src.padded(batch, pad_id).to(device)  # (B, S)
        max_length = config.decode_length(src.shape[1], model.config.max_length)
        decoded = beam_search(model, src, config.beam_size, config.length_penalty, max_length)
        for row, tokens in zip(batch, decoded):
            hypotheses[row] = tokens
    return hypotheses


@torch.no_grad()
def classify(
    model: EncoderClassifier,
    examples: ClassificationExamples,
    config: EvalConfig,
    device: torch.device,
) -> np.ndarray:
    """Predicted class per example, in the examples' order."""
    model.eval()
    predictions = np.zeros(len(examples), dtype=np.int64)
    pad_id = model.config.pad_id
    for batch in _length_sorted_batches(examples.input_ids.lengths, config.batch_size):
        inputs = examples.input_ids.padded(batch, pad_id).to(device)  # (B, L)
        segments = examples.segment_ids.padded(batch, 0).to(device)  # (B, L)
        predictions[batch] = model(inputs, segments).argmax(dim=-1).cpu().numpy()
    return predictions


# ---------------------------------------------------------------------------------------------
# Scores


def detokenize(model_proto: bytes, hypotheses: Sequence[Sequence[int]]) -> list[str]:
    """Token ids -> text with the SentencePiece model given as bytes (as workers receive it)."""
    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    return [processor.decode(list(map(int, ids))) for ids in hypotheses]


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu defaults) with their signatures."""
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    # Signatures are complete only after scoring (they record e.g. the effective order).
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        raise ValueError("accuracy of an empty evaluation set")
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN).

    A class with no true and no predicted example has an undefined F1 and is left out of the
    mean (it cannot be got right or wrong); a class that occurs but is never predicted, or is
    predicted but never occurs, scores 0.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("F1 of an empty evaluation set")
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def classification_scores(
    predictions: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    return {
        "accuracy": accuracy(predictions, labels),
        "f1": macro_f1(predictions, labels, num_classes),
    }

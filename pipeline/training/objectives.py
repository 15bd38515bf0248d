"""Each task's model wrapped so that forward(**batch) returns the training loss.

DeepSpeed runs `engine(**batch)` and backpropagates what comes out, so the loss belongs inside
the module it wraps. Losses are computed from fp32 logits: under bf16 a cross-entropy reduced in
bf16 keeps about three significant digits, too few for a sum over thousands of tokens. `summed`
gives validation a loss that adds up across batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat.models import ClassifierConfig, EncoderClassifier, Seq2SeqConfig, Seq2SeqTransformer
from pipeline.batching import Examples, special_ids, token_budget_batches


class TranslationObjective(nn.Module):
    """Label-smoothed token cross-entropy of a `Seq2SeqTransformer`, mean over target tokens."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.model = model

    def _loss(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, reduction: str) -> Tensor:
        logits = self.model(src, tgt_in).float()  # (B, T, V)
        return F.cross_entropy(
            logits.flatten(0, 1),  # (B * T, V)
            tgt_out.flatten(),  # (B * T,)
            ignore_index=self.model.config.pad_id,
            label_smoothing=self.model.config.label_smoothing,
            reduction=reduction,
        )

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        return self._loss(src, tgt_in, tgt_out, "mean")

    def summed(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, int]:
        """(loss summed over target tokens, number of target tokens)."""
        loss = self._loss(src, tgt_in, tgt_out, "sum")
        return loss, int(tgt_out.ne(self.model.config.pad_id).sum())


class ClassificationObjective(nn.Module):
    """Cross-entropy of an `EncoderClassifier`, mean over sentences."""

    def __init__(self, model: EncoderClassifier) -> None:
        super().__init__()
        self.model = model

    def _loss(
        self, input_ids: Tensor, segment_ids: Tensor, labels: Tensor, reduction: str
    ) -> Tensor:
        logits = self.model(input_ids, segment_ids).float()  # (B, C)
        return F.cross_entropy(logits, labels, reduction=reduction)

    def forward(self, input_ids: Tensor, segment_ids: Tensor, labels: Tensor) -> Tensor:
        return self._loss(input_ids, segment_ids, labels, "mean")

    def summed(self, input_ids: Tensor, segment_ids: Tensor, labels: Tensor) -> tuple[Tensor, int]:
        """(loss summed over sentences, number of sentences)."""
        return self._loss(input_ids, segment_ids, labels, "sum"), int(labels.numel())


Objective = TranslationObjective | ClassificationObjective


def build_objective(config: Seq2SeqConfig | ClassifierConfig) -> Objective:
    if isinstance(config, Seq2SeqConfig):
        return TranslationObjective(Seq2SeqTransformer(config))
    return ClassificationObjective(EncoderClassifier(config))


@torch.no_grad()
def summed_loss(objective: Objective, examples: Examples, tokens_per_batch: int,
                batch_tokens: str, to_device: Callable[[dict[str, Tensor]], dict[str, Tensor]],
                ) -> tuple[float, int]:
    """(loss summed over the examples' targets, their count) in token-budget batches, the
    objective as it stands (call `.eval()` first): validation's figure before ranks add up."""
    ids = special_ids(objective.model.config)
    total, count = 0.0, 0
    for indices in token_budget_batches(examples.lengths(), tokens_per_batch,
                                        batch_tokens=batch_tokens):
        loss, terms = objective.summed(**to_device(examples.collate(indices, *ids)))
        total, count = total + float(loss), count + terms
    return total, count

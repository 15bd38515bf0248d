"""The plain PyTorch training loop `heat-pipeline bench train` holds the pipeline against.

One process, no Ray, no DeepSpeed: the same objective, initial weights (seeded as
`pipeline.training.worker.VariantRun` seeds them), AdamW and warm-up schedule
(`pipeline.training.engine`), gradient clipping, token-budget batches in the same order
(`pipeline.batching.BatchStream` with the job's seed) and dropout stream as the pipeline's
worker, written the way a PyTorch user would write it. With `reference=True` the model is
`torch.nn.Transformer` of the same sizes (`pipeline.bench.reference`) instead of the project's.
With `val_every` it records the validation loss as the worker computes it (outside the timed
steps; evaluation mode draws no random numbers, so the training losses stay the same), and with
`evaluate` the test scores of the final weights as the evaluate stage computes them (the same
beam search, SentencePiece detokenisation and sacrebleu).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pipeline.batching import BatchStream, special_ids
from pipeline.training.engine import optimizer_and_schedule
from pipeline.config import TrainConfig
from pipeline.training.job import TrainJob
from pipeline.training.objectives import (Objective, TranslationObjective, build_objective,
                                          summed_loss)
from pipeline.training.phases import Phases
from pipeline.training.rankdata import RankData


@dataclass
class LoopRecord:
    """One loop's steps: loss, tokens (source + target, real) and wall seconds of each, and
    the seconds of each part of them (`Phases.split`)."""

    name: str
    losses: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=dict)
    val_losses: dict[str, float] = field(default_factory=dict)  # step -> validation loss
    scores: dict[str, float] = field(default_factory=dict)  # the final weights' test scores
    seed: int = 0  # train.seed

    @classmethod
    def of(cls, name: str, steps: list[tuple[float, int, float]], phases: Phases) -> LoopRecord:
        losses, tokens, seconds = (list(column) for column in zip(*steps))
        return cls(name, losses, tokens, seconds, phases.split(sum(seconds)))

    def tokens_per_s(self, skip: int = 0) -> float:
        """Tokens over wall seconds of the steps after the first `skip`."""
        return sum(self.tokens[skip:]) / max(sum(self.seconds[skip:]), 1e-9)

    def to_dict(self) -> dict:
        return {"name": self.name, "losses": self.losses, "tokens": self.tokens,
                "seconds": self.seconds, "split_s": self.split, "val_losses": self.val_losses,
                "scores": self.scores, "seed": self.seed}

    @classmethod
    def from_dict(cls, record: dict) -> LoopRecord:
        return cls(record["name"], record["losses"], record["tokens"], record["seconds"],
                   record["split_s"], record.get("val_losses", {}), record.get("scores", {}),
                   record.get("seed", 0))


class PlainLoop:
    """The plain loop's state (model, AdamW, schedule, batches, dropout stream) and one
    optimizer step at a time; `plain_loop` runs it, and the interleaved bench steps it in turn
    with the pipeline's worker in one process."""

    def __init__(self, job: TrainJob, data: RankData, *, reference: bool = False,
                 device: torch.device = torch.device("cpu")) -> None:
        self.train, self.data, self.device = job.train, data, device
        train, config = job.train, job.model_config(job.variants[0])
        torch.set_num_threads(train.torch_threads)
        torch.manual_seed(train.seed)  # the worker's initial weights
        if reference:
            from pipeline.bench.reference import TorchTransformerReference

            self.objective: Objective = TranslationObjective(TorchTransformerReference(config))
        else:
            self.objective = build_objective(config)
        self.objective.to(device)
        torch.manual_seed(train.seed + 1000)  # the worker's dropout stream (rank 0)
        self.optimizer, self.schedule = optimizer_and_schedule(self.objective, train)
        self.stream = BatchStream(data.train.lengths(), train.tokens_per_batch, train.seed,
                                  batch_tokens=train.batch_tokens)
        self.pad_id, self.bos_id = special_ids(config)
        self.phases = Phases(device)
        self.objective.train()

    def step(self) -> tuple[float, int, float]:
        """One optimizer step: (mean loss of its micro-batches, tokens, wall seconds)."""
        train, phases = self.train, self.phases
        start = time.perf_counter()
        losses, tokens = [], 0
        for _ in range(train.grad_accum_steps):
            with phases("data"):
                indices = next(self.stream)
                batch = {k: v.to(self.device) for k, v in
                         self.data.train.collate(indices, self.pad_id, self.bos_id).items()}
            with phases("forward"):
                loss = self.objective(**batch)
            with phases("backward"):
                (loss / train.grad_accum_steps).backward()
            losses.append(loss.detach().item())
            tokens += self.data.train.tokens(indices)
        with phases("optimizer"):
            if train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.objective.parameters(), train.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses), tokens, time.perf_counter() - start


def plain_loop(job: TrainJob, data: RankData, steps: int, *, reference: bool = False,
               device: torch.device = torch.device("cpu"), val_every: int = 0,
               evaluate: bool = False) -> LoopRecord:
    """`steps` optimizer steps of the job's first variant (or of the reference model); the
    validation loss every `val_every` steps and at the last; test scores if `evaluate`."""
    loop = PlainLoop(job, data, reference=reference, device=device)
    done, val_losses = [], {}
    for step in range(1, steps + 1):
        done.append(loop.step())
        if val_every and (step % val_every == 0 or step == steps):
            val_losses[str(step)] = validation_loss(loop.objective, data, job.train, device)
    record = LoopRecord.of("reference" if reference else "plain", done, loop.phases)
    record.val_losses = val_losses
    if evaluate:
        record.scores = test_scores(job, loop.objective.model, device)
    return record


def validation_loss(objective: Objective, data: RankData, train: TrainConfig,
                    device: torch.device) -> float:
    """The mean validation loss per target (the worker's `val/loss`, one rank)."""
    objective.eval()
    total, count = summed_loss(objective, data.validation, train.tokens_per_batch,
                               train.batch_tokens,
                               lambda batch: {k: v.to(device) for k, v in batch.items()})
    objective.train()
    return total / count


def test_scores(job: TrainJob, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
    """The evaluate stage's scores of `model` on the job's evaluation split (`job.eval`)."""
    import numpy as np

    from pipeline.stages.evaluate import (classification_scores, classify, detokenize,
                                          evaluation_rows, translate, translation_scores)

    examples = evaluation_rows(job, 0, 1)
    if job.task == "translation":
        texts = detokenize(job.tokenizer_model, translate(model, examples, job.eval, device))
        scores = translation_scores(texts, examples.refs or [])
    else:
        predictions = classify(model, examples, job.eval, device)
        scores = classification_scores(predictions, np.asarray(examples.labels),
                                       job.num_labels or 0)
    model.train()
    return {k: float(v) for k, v in scores.items() if isinstance(v, float)}

"""The evaluate stage: each variant's best weights, read back from storage, decoded and scored.

Translation: batched beam search (`heat.decoding`), detokenized with the run's SentencePiece
model, scored with sacrebleu's corpus BLEU and chrF, signatures included. Classification:
argmax predictions, accuracy and macro-averaged F1.

The evaluation split is decoded in `train.num_workers` Ray tasks with a training worker's
resources, each its share (rows position % shares == share, `pipeline.batching.RankRows`, as
the training workers split their rows); the driver gathers, scores, writes the hypotheses and
logs into the variant's MLflow child run. Beam search is the costly part and splits evenly; the
gathered token lists are small. Because it reads only storage, a finished run can be re-scored
with other settings (`heat-pipeline evaluate RUN --beam-size 5`): its scores are tracked under
a label naming what changed (`test_beam5/bleu`). The decoding and scoring functions import no
Ray and also score a model in a plain process.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
import sentencepiece as spm
import torch

from heat.decoding import beam_search
from heat.models import EncoderClassifier, Seq2SeqTransformer
from pipeline import storage
from pipeline.batching import (ClassificationExamples, Examples, TranslationExamples,
                               load_rank_rows)
from pipeline.config import EvalConfig, Variant
from pipeline.diagnostics import diagnose_job, log_diagnostics
from pipeline.stages.base import Stage, StageContext
from pipeline.training.job import TrainJob
from pipeline.tracking import task_tags
from pipeline.training.rankdata import split_tables
from pipeline.training.outputs import (
    HYPOTHESES_FILE,
    REFERENCES_FILE,
    TABLE_FILE,
    copy_to_storage,
    load_model,
    write_hypotheses,
    write_table,
)
from pipeline.training.run_log import VariantLog

logger = logging.getLogger(__name__)

DIAGNOSTIC_BATCHES = 2
"""Validation batches the attention diagnostics of each variant run on (`heat-pipeline
diagnose` takes more)."""
DIAGNOSTIC_MAX_ROWS = 16
"""At most this many sequences of each: the exact counterparts are quadratic, on the driver."""


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


# ---------------------------------------------------------------------------------------------
# The driver: Ray tasks decode, the driver scores and tracks


def evaluate(job: TrainJob, trained: dict[str, dict[str, Any]], *, out_uri: str | None = None,
             label: str = "", on_scored: Callable[[str], None] | None = None,
             ) -> dict[str, dict[str, Any]]:
    """Score every variant's best weights (`job.checkpoint_uri`) on `job.eval.split`.

    `trained` is the train stage's result per variant (its step count is the step the scores are
    logged at). Hypotheses go to `<out_uri>/<variant>/` (default: beside the weights). `label`
    '' logs the scores as `<split>/bleu` (chrf, accuracy, f1: `test/bleu`), another label under
    `<label>/<name>`, so a re-scoring adds to the child run instead of overwriting it.
    `on_scored(variant)` runs as soon as a variant's scores are tracked (the pipeline ends its
    child run there)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    shares = job.train.num_workers
    # "DEFAULT": on the cluster's free resources, never inside the caller's placement group (a
    # Tune trial's holds no CPU; its Ray Train workers, too, run outside it).
    decode = ray.remote(decode_share).options(
        num_cpus=job.train.cpus_per_worker, num_gpus=1 if job.train.use_gpu else 0,
        scheduling_strategy="DEFAULT")
    # Every variant's shares at once: Ray runs them as CPUs free up.
    pending = {v.name: [decode.remote(job, v, share, shares) for share in range(shares)]
               for v in job.variants}
    results = {}
    for variant in job.variants:
        rows = sorted(row for part in ray.get(pending[variant.name]) for row in part)
        folder = storage.join(out_uri, variant.name) if out_uri else job.result_uri(variant.name)
        results[variant.name] = _score_and_track(job, variant, rows, folder, label,
                                                 step=trained[variant.name]["steps"])
        logger.info("evaluate: %s: %s", variant.name, _scores_text(results[variant.name]))
        if on_scored is not None:
            on_scored(variant.name)
    return results


def decode_share(job: TrainJob, variant: Variant, share: int, shares: int) -> list[tuple]:
    """One Ray task: this share's (position, output, truth) rows of the evaluation split."""
    torch.set_num_threads(job.train.torch_threads)
    device = torch.device("cuda" if job.train.use_gpu else "cpu")
    model = load_model(job.checkpoint_uri(variant.name)).to(device)
    examples = evaluation_rows(job, share, shares)
    if job.task == "translation":
        outputs = translate(model, examples, job.eval, device)
        sources = [examples.src[i].tolist() for i in range(len(examples))]
        return list(zip(examples.index.tolist(), outputs, examples.refs or [], sources))
    predictions = classify(model, examples, job.eval, device)
    sources = [examples.input_ids[i].tolist() for i in range(len(examples))]
    return list(zip(examples.index.tolist(), predictions.tolist(), examples.labels.tolist(),
                    sources))


def evaluation_rows(job: TrainJob, share: int, shares: int) -> Examples:
    """This share's rows of the evaluation split (its first max_examples rows, if set)."""
    return load_rank_rows(split_tables(job.split_uri(job.eval.split)), job.task, share, shares,
                          keep_refs=job.task == "translation", max_rows=job.eval.max_examples)


def _score_and_track(job: TrainJob, variant: Variant, rows: list[tuple], folder: str,
                     label: str, step: int) -> dict[str, Any]:
    """Scores of the gathered rows; hypotheses to storage; both into the MLflow child run,
    the scores as `<split>/bleu` ... (`<label>/bleu` for a re-scoring)."""
    _, outputs, truths, sources = zip(*rows)
    if job.task == "translation":
        texts = detokenize(job.tokenizer_model, outputs)
        scores = translation_scores(texts, truths)
    else:
        texts = [str(label) for label in outputs]
        scores = classification_scores(np.array(outputs), np.array(truths), job.num_labels or 0)
    # Four decimals: what the runs table shows (BLEU 87.5432, accuracy 0.8533), nothing lost.
    scores = {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}
    log = VariantLog.of(job, variant)
    prefix = f"{label or job.eval.split}/"
    with tempfile.TemporaryDirectory(prefix="heat-eval-") as tmp:
        write_hypotheses(Path(tmp), texts, [str(truth) for truth in truths])
        write_table(Path(tmp), detokenize(job.tokenizer_model, sources),
                    [str(truth) for truth in truths], texts)
        copy_to_storage(Path(tmp), folder)
        for name in (HYPOTHESES_FILE, REFERENCES_FILE, TABLE_FILE):
            log.artifact(Path(tmp) / name, label or None)
    log.metrics({prefix + k: v for k, v in scores.items() if isinstance(v, float)}, step=step)
    log.tags({prefix + k: v for k, v in scores.items() if isinstance(v, str)})
    result = {**scores, "hypotheses_uri": storage.join(folder, HYPOTHESES_FILE)}
    if not label:  # a re-scoring has the same weights: their diagnostics are tracked already
        error = _track_diagnostics(job, variant, step)
        if error is not None:
            result["attention_error"] = error
    return result


def _track_diagnostics(job: TrainJob, variant: Variant, step: int) -> float | None:
    """The kernel's error against its exact counterpart at every site, on a few validation
    batches (`pipeline.diagnostics`), into the child run as `diag/...`; the largest (the
    summary's `attn err`). Not worth failing the evaluation over: a failure is a warning."""
    try:
        rows = diagnose_job(job, variant, batches=DIAGNOSTIC_BATCHES,
                            max_rows=DIAGNOSTIC_MAX_ROWS)
        log_diagnostics(job, variant, rows, step=step)
    except Exception:  # noqa: BLE001 - the scores are tracked; the diagnostics are extra
        logger.warning("evaluate: %s: attention diagnostics failed", variant.name, exc_info=True)
        return None
    return max((row.rel_error for row in rows), default=0.0)


def _scores_text(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if isinstance(v, float))


def evaluation_label(run: EvalConfig, wanted: EvalConfig) -> str:
    """'' for the run's own eval settings; else the split and what differs, e.g. 'test_beam5'."""
    if wanted == run:
        return ""
    short = {"beam_size": "beam", "length_penalty": "lp", "max_examples": "n",
             "batch_size": "batch", "max_length_ratio": "ratio", "max_length_offset": "offset"}
    changed = [f"{short[f.name]}{getattr(wanted, f.name):g}"
               for f in dataclasses.fields(EvalConfig)
               if f.name in short and getattr(wanted, f.name) != getattr(run, f.name)]
    return "_".join([wanted.split, *changed])


class EvaluateStage(Stage):
    name = "evaluate"
    sections = ("eval",)
    code = ("pipeline/stages/evaluate.py", "pipeline/batching.py", "pipeline/training/outputs.py",
            "pipeline/diagnostics.py", "heat/**/*.py", "heat/**/*.cpp")
    per_run = True

    def inputs(self, context: StageContext) -> dict[str, Any]:
        return {"trained": context.outcomes["train"].uri,
                "eval": dataclasses.asdict(context.task.eval)}

    def run(self, context: StageContext, out_uri: str) -> dict[str, Any]:
        """Score into the variants' child runs (reopened if training was skipped), end them."""
        task, tracker = context.task, context.tracker
        children = tracker.child_runs(task.name, [v.name for v in task.variants],
                                      seed=context.seed,
                                      tags=task_tags(task.kind, task.data.dataset))
        job = evaluation_job(context, {n: c.run_id for n, c in children.items()})
        return evaluate(job, context.outcomes["train"].result, out_uri=out_uri,
                        label=context.eval_label,
                        on_scored=lambda variant: tracker.finish(children[variant].run_id))


def evaluation_job(context: StageContext, mlflow_run_ids: dict[str, str] | None) -> TrainJob:
    """The job that scores the task's trained variants (the finished tokenize and train
    outcomes in `context`): tracked into `mlflow_run_ids` (variant -> child run), or with
    None untracked."""
    tokenized, trained = context.outcomes["tokenize"], context.outcomes["train"]
    tracker = context.tracker
    return TrainJob.for_task(
        context.task, data_uri=tokenized.uri,
        tokenizer_model=storage.read_bytes(storage.join(tokenized.uri, "spm.model")),
        train_uri=trained.uri,
        tracking_uri=tracker.tracking_uri if tracker is not None else context.config.tracking.uri,
        mlflow_run_ids=mlflow_run_ids, tracked=mlflow_run_ids is not None)

"""The tokenize stage: a SentencePiece model trained on a bounded sample of the prepared train
split, then every split encoded into token ids with Ray Data `map_batches`.

Output (`out_uri`):

    spm.model, spm.vocab       the model (and its pieces with scores, for reading)
    {split}.parquet/           token ids, columns in `pipeline.data.encoding`
    tokenize.json              vocabulary size, special ids, rows and truncated rows per split

Translation uses one joint vocabulary over source and target (so embeddings can be tied). The
sample is chosen by a hash of each sentence and the spec's seed, so it does not depend on how
the data is partitioned. The model travels to the Ray workers as bytes, never as a path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import sentencepiece as spm
from ray.data import SaveMode
from tqdm import tqdm

from heat.validation import ConfigError, check_int
from pipeline import storage
from pipeline.config import DataConfig, TokenizerSpec
from pipeline.data.cleaning import SPLITS
from pipeline.data.encoding import encode_batch
from pipeline.data.schema import Schema
from pipeline.stages.base import Stage, StageContext, result_dict

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TokenizeResult:
    out_uri: str
    task: str
    vocab_size: int
    """Pieces in the trained model (for `char`, may be below the spec's vocab_size)."""
    rows: dict[str, int]
    truncated: dict[str, int]
    """Rows per split with a sequence cut to max_tokens."""
    pad_id: int
    bos_id: int
    eos_id: int
    model_proto: bytes = field(repr=False)
    """The SentencePiece model, serialized: what the training workers receive."""

    @property
    def model_uri(self) -> str:
        return storage.join(self.out_uri, "spm.model")

    def split_uri(self, split: str) -> str:
        return storage.join(self.out_uri, f"{split}.parquet")


def _sample_batch(batch: pa.Table, columns: tuple[str, ...], fraction: float,
                  seed: int) -> pa.Table:
    """The sentences of `columns` whose hash (with the seed) falls below `fraction`."""
    threshold = int(fraction * 2**32)
    chosen = []
    for column in columns:
        for text in batch[column].to_pylist():
            if not text:
                continue
            digest = hashlib.sha1(f"{seed}\x1f{text}".encode()).digest()
            if int.from_bytes(digest[:4], "big") < threshold:
                chosen.append(text)
    return pa.table({"sentence": pa.array(chosen, pa.string())})


def sample_sentences(train: ray.data.Dataset, schema: Schema, spec: TokenizerSpec
                     ) -> Iterator[str]:
    """About `input_sentence_size` sentences of the train split (never more), streamed to the
    driver: all text columns (translation: source and target, for the joint vocabulary)."""
    available = train.count() * len(schema.text_columns)
    fraction = min(1.0, spec.input_sentence_size / max(available, 1))
    sampled = train.map_batches(
        _sample_batch, batch_format="pyarrow",
        fn_kwargs={"columns": schema.text_columns, "fraction": fraction, "seed": spec.seed})
    expected = min(spec.input_sentence_size, available)
    remaining = spec.input_sentence_size
    # disable=None: a bar on a terminal only (a log or `ray job logs` gets no \r-redrawn lines)
    with tqdm(total=expected, desc="tokenizer sample", unit="sentences",
              disable=None) as progress:
        for batch in sampled.iter_batches(batch_format="pyarrow"):
            sentences = batch["sentence"].to_pylist()[:remaining]
            yield from sentences
            progress.update(len(sentences))
            remaining -= len(sentences)
            if not remaining:
                return


_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_model(spec: TokenizerSpec, sentences: Iterator[str], num_threads: int) -> bytes:
    """Train SentencePiece in memory and return the serialized model. A vocabulary the corpus
    cannot fill, or too small for its characters, is a `ConfigError` on tokenizer.vocab_size."""
    model = io.BytesIO()
    spm.set_random_generator_seed(spec.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences, model_writer=model, model_type=spec.model_type,
            vocab_size=spec.vocab_size, character_coverage=spec.character_coverage,
            byte_fallback=spec.byte_fallback,
            normalization_rule_name=spec.normalization_rule_name,
            pad_id=spec.pad_id, bos_id=spec.bos_id, eos_id=spec.eos_id, unk_id=spec.unk_id,
            user_defined_symbols=spec.user_defined_symbols,
            input_sentence_size=spec.input_sentence_size, shuffle_input_sentence=True,
            num_threads=num_threads, minloglevel=2,
        )
    except RuntimeError as error:
        if match := _TOO_LARGE.search(str(error)):
            raise ConfigError("tokenizer.vocab_size", (
                f"{match[1]} is more than this corpus allows: SentencePiece ({spec.model_type}) "
                f"reports a maximum of {match[2]} for the sampled train sentences; set "
                f"tokenizer.vocab_size <= {match[2]}")) from None
        if match := _TOO_SMALL.search(str(error)):
            raise ConfigError("tokenizer.vocab_size", (
                f"{match[1]} is below the {match[2]} characters that character_coverage="
                f"{spec.character_coverage} keeps; raise tokenizer.vocab_size or lower "
                f"tokenizer.character_coverage")) from None
        raise
    return model.getvalue()


def _vocab_text(processor: spm.SentencePieceProcessor) -> str:
    return "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n"
                   for i in range(processor.get_piece_size()))


def _tag_split(batch: pa.Table, split: str) -> pa.Table:
    return batch.append_column("split", pa.array([split] * batch.num_rows, pa.string()))


def _read_prepared(prepared_uri: str) -> ray.data.Dataset:
    parts = [ray.data.read_parquet(storage.join(prepared_uri, f"{split}.parquet")).map_batches(
        _tag_split, fn_kwargs={"split": split}, batch_format="pyarrow") for split in SPLITS]
    return parts[0].union(*parts[1:])


def _count(batch: pa.Table) -> pa.Table:
    # Single-threaded: see pipeline.data.cleaning.count_reasons.
    counts = batch.group_by("split", use_threads=False).aggregate(
        [([], "count_all"), ("truncated", "sum")])
    return counts.select(["split", "count_all", "truncated_sum"])


def run_tokenize(
    spec: TokenizerSpec, data: DataConfig, prepared_uri: str, out_uri: str, *,
    max_tokens: int, num_cpus: int | None = None,
) -> TokenizeResult:
    """Train the model on the prepared train split, encode every split, write to `out_uri`.

    `max_tokens` bounds every sequence, eos included (the model's max_length). `num_cpus` sets
    SentencePiece's training threads and the encoder actors (None: this machine's cores for
    training, one actor)."""
    check_int("max_tokens", max_tokens, 2)
    schema = data.schema()
    train = ray.data.read_parquet(storage.join(prepared_uri, "train.parquet"))
    proto = train_model(spec, sample_sentences(train, schema, spec), num_cpus or os.cpu_count())
    processor = spm.SentencePieceProcessor(model_proto=proto)
    storage.write_bytes(storage.join(out_uri, "spm.model"), proto)
    storage.write_bytes(storage.join(out_uri, "spm.vocab"), _vocab_text(processor).encode())
    log.info("tokenize: trained a %s model with %d pieces", spec.model_type,
             processor.get_piece_size())

    encoded = _read_prepared(prepared_uri).map_batches(
        encode_batch, batch_format="pyarrow", concurrency=num_cpus or 1,
        fn_kwargs={"model_proto": proto, "task": data.task, "max_tokens": max_tokens},
    )
    encoded.context.execution_options.preserve_order = True
    encoded = encoded.materialize()
    rows, truncated = {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}
    for row in encoded.map_batches(_count, batch_format="pyarrow").take_all():
        rows[row["split"]] += row["count_all"]
        truncated[row["split"]] += row["truncated_sum"] or 0
    for split in SPLITS:
        encoded.map_batches(_split_only, fn_kwargs={"split": split}, batch_format="pyarrow"
                            ).write_parquet(storage.join(out_uri, f"{split}.parquet"),
                                            mode=SaveMode.OVERWRITE)
        log.info("tokenize: %s: %d rows, %d truncated to %d tokens", split, rows[split],
                 truncated[split], max_tokens)
    result = TokenizeResult(
        out_uri=storage.resolve(out_uri), task=data.task, vocab_size=processor.get_piece_size(),
        rows=rows, truncated=truncated, pad_id=processor.pad_id(), bos_id=processor.bos_id(),
        eos_id=processor.eos_id(), model_proto=proto,
    )
    storage.write_json(storage.join(out_uri, "tokenize.json"), _summary(result, max_tokens))
    return result


def _split_only(batch: pa.Table, split: str) -> pa.Table:
    """The rows of one split, without the bookkeeping columns."""
    rows = batch.filter(pc.equal(batch["split"], split))
    return rows.drop_columns(["split", "truncated"])


def _summary(result: TokenizeResult, max_tokens: int) -> dict[str, Any]:
    return {"task": result.task, "vocab_size": result.vocab_size, "rows": result.rows,
            "truncated": result.truncated, "max_tokens": max_tokens, "pad_id": result.pad_id,
            "bos_id": result.bos_id, "eos_id": result.eos_id}


def load_tokenize_result(out_uri: str) -> TokenizeResult:
    """The result of a finished tokenize stage, from tokenize.json and spm.model (for a
    skipped rerun)."""
    summary = storage.read_json(storage.join(out_uri, "tokenize.json"))
    return TokenizeResult(
        out_uri=storage.resolve(out_uri), task=summary["task"], vocab_size=summary["vocab_size"],
        rows=summary["rows"], truncated=summary["truncated"], pad_id=summary["pad_id"],
        bos_id=summary["bos_id"], eos_id=summary["eos_id"],
        model_proto=storage.read_bytes(storage.join(out_uri, "spm.model")),
    )


class TokenizeStage(Stage):
    name = "tokenize"
    sections = ("tokenizer",)
    code = ("pipeline/stages/tokenize.py", "pipeline/data/encoding.py")

    def inputs(self, context: StageContext) -> dict[str, Any]:
        task = context.task
        return {"prepared": context.outcomes["prepare"].uri,
                "tokenizer": dataclasses.asdict(task.tokenizer),
                "max_tokens": task.model.max_length}

    def run(self, context: StageContext, out_uri: str) -> dict[str, Any]:
        task = context.task
        return result_dict(run_tokenize(task.tokenizer, task.data,
                                        context.outcomes["prepare"].uri, out_uri,
                                        max_tokens=task.model.max_length, num_cpus=context.cpus))

    def load(self, uri: str) -> TokenizeResult:
        return load_tokenize_result(uri)

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

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
import sentencepiece as spm
from ray.data import SaveMode
from tqdm import tqdm

from heat.validation import ConfigError, check_float, check_int
from pipeline.configtools import build, load_yaml
from pipeline.data import storage
from pipeline.data.cleaning import SPLITS
from pipeline.data.encoding import SentencePieceEncoder
from pipeline.data.schema import Schema
from pipeline.stages.prepare import DataConfig

log = logging.getLogger(__name__)

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "tokenizers"
"""Where `load_tokenizer_spec` finds specs by name: tokenizers/<name>.yaml in the repository."""


@dataclass(frozen=True, kw_only=True)
class TokenizerSpec:
    """A SentencePiece vocabulary: the `tokenizer` section, or a tokenizers/<name>.yaml file."""

    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    vocab_size: int = 8000
    """Pieces including the special ones; an upper bound for `char`. Too many for the corpus
    is an error naming the maximum SentencePiece reports."""
    character_coverage: float = 1.0
    """Share of characters the model covers (1.0 for Latin scripts; rarer ones become unk, or
    bytes with byte_fallback)."""
    byte_fallback: bool = False
    """Spell unknown characters as UTF-8 byte pieces (needs 256 extra pieces)."""
    normalization_rule_name: Literal["identity", "nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf"] = (
        "identity")
    """SentencePiece's own normalisation; identity because prepare already normalised the text,
    which keeps decode(encode(text)) == text and the BLEU references exact."""
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    input_sentence_size: int = 1_000_000
    """Sentences (source and target each count) sampled from train to fit the model on."""
    seed: int = 0
    """Seeds the sample and SentencePiece's own sampling."""
    user_defined_symbols: list[str] = field(default_factory=list)
    """Pieces always kept whole (e.g. markup tokens)."""

    def __post_init__(self) -> None:
        specials = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
                    "unk_id": self.unk_id}
        reserved = len(specials) + len(self.user_defined_symbols) + (256 if self.byte_fallback
                                                                      else 0)
        if self.byte_fallback and self.vocab_size <= reserved:
            raise ConfigError("vocab_size", f"must exceed {reserved} with byte_fallback (256 "
                                            f"byte pieces + special pieces), got {self.vocab_size}")
        check_int("vocab_size", self.vocab_size, reserved + 1)
        check_float("character_coverage", self.character_coverage, 0.0, 1.0)
        for name, value in specials.items():
            check_int(name, value, 0, self.vocab_size - 1)
        if len(set(specials.values())) != len(specials):
            raise ConfigError("pad_id", f"the special ids must be distinct, got {specials}")
        check_int("input_sentence_size", self.input_sentence_size, 1)
        check_int("seed", self.seed, 0)
        for i, symbol in enumerate(self.user_defined_symbols):
            if not symbol or any(c.isspace() for c in symbol):
                raise ConfigError(f"user_defined_symbols[{i}]",
                                  f"must be non-empty without whitespace, got {symbol!r}")


def load_tokenizer_spec(source: str | Mapping[str, Any]) -> TokenizerSpec:
    """The `tokenizer` config value: a name (tokenizers/<name>.yaml), a path to a YAML file, or
    an inline mapping. Errors name the file and the key."""
    if isinstance(source, Mapping):
        return build(TokenizerSpec, source, "tokenizer")
    if not isinstance(source, str):
        raise ConfigError("tokenizer", f"must be a spec name ({', '.join(spec_names())}), a "
                                       f"YAML path or a mapping, got {source!r}")
    path = Path(source) if source.endswith((".yaml", ".yml")) else TOKENIZER_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError("tokenizer", f"no tokenizer spec {source!r}: {path} does not exist; "
                                       f"known specs: {', '.join(spec_names())}")
    try:
        return build(TokenizerSpec, load_yaml(str(path)), "tokenizer")
    except ConfigError as error:
        message = str(error)[len(error.field) + 2:]
        raise ConfigError(error.field, f"{message} (in {path})") from None


def spec_names() -> list[str]:
    return sorted(p.stem for p in TOKENIZER_DIR.glob("*.yaml"))


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
    with tqdm(total=expected, desc="tokenizer sample", unit="sentences") as progress:
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
        SentencePieceEncoder, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=num_cpus or 1),
        fn_constructor_kwargs={"model_proto": proto, "task": data.task, "max_tokens": max_tokens},
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

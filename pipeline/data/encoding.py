"""Encoding prepared rows into token ids with a SentencePiece model, as a Ray Data callable.

Output columns (`list<int32>`: Ray Data cannot unify ragged numpy object arrays, so batches are
returned as pyarrow tables):

    translation:    src_ids, tgt_ids (pieces + eos, no bos), ref (the target text: BLEU's
                    reference), truncated
    classification: input_ids (text + eos [+ pair + eos]), segment_ids (0 for the text and its
                    eos, 1 for the pair and its), label, truncated

Sequences are cut to `max_tokens` ids, eos included (pairs: the longer side first); `truncated`
marks the rows that were cut, for counting. Other input columns (a split tag, say) pass through.
"""

from __future__ import annotations

import functools

import pyarrow as pa
import sentencepiece as spm

_IDS = pa.list_(pa.int32())


def with_eos(pieces: list[int], max_tokens: int, eos_id: int) -> tuple[list[int], bool]:
    """`pieces + [eos]`, cut to `max_tokens` ids; and whether it was cut."""
    keep = max_tokens - 1
    return pieces[:keep] + [eos_id], len(pieces) > keep


def pair_with_eos(
    text: list[int], pair: list[int], max_tokens: int, eos_id: int
) -> tuple[list[int], list[int], bool]:
    """`text + [eos] + pair + [eos]` and its segment ids, cut longest-first to `max_tokens`."""
    budget = max_tokens - 2
    cut = len(text) + len(pair) > budget
    if cut:
        keep_text = min(len(text), max(budget - budget // 2, budget - len(pair)))
        text, pair = text[:keep_text], pair[: budget - keep_text]
    ids = text + [eos_id] + pair + [eos_id]
    return ids, [0] * (len(text) + 1) + [1] * (len(pair) + 1), cut


class SentencePieceEncoder:
    """`map_batches` callable class: prepared rows (pyarrow) -> token ids (pyarrow).

    Constructed from the model's serialized proto, not a file path: Ray ships the bytes to each
    actor with its constructor arguments, so workers on other nodes never need the driver's
    disk."""

    def __init__(self, model_proto: bytes, task: str, max_tokens: int) -> None:
        if not isinstance(model_proto, bytes):
            raise TypeError(f"model_proto must be the model's bytes, got {type(model_proto)}")
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.task = task
        self.max_tokens = max_tokens
        self.eos_id = self.processor.eos_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.task == "translation":
            encoded, consumed = self._translation(batch), ("src", "tgt")
        else:
            encoded, consumed = self._classification(batch), ("text", "text_pair", "label")
        for name in batch.column_names:
            if name not in consumed:
                encoded = encoded.append_column(name, batch[name])
        return encoded

    def _translation(self, batch: pa.Table) -> pa.Table:
        src = [with_eos(p, self.max_tokens, self.eos_id)
               for p in self.processor.encode(batch["src"].to_pylist())]
        tgt = [with_eos(p, self.max_tokens, self.eos_id)
               for p in self.processor.encode(batch["tgt"].to_pylist())]
        return pa.table({
            "src_ids": pa.array([ids for ids, _ in src], _IDS),
            "tgt_ids": pa.array([ids for ids, _ in tgt], _IDS),
            "ref": batch["tgt"],
            "truncated": pa.array([a or b for (_, a), (_, b) in zip(src, tgt)], pa.bool_()),
        })

    def _classification(self, batch: pa.Table) -> pa.Table:
        texts = self.processor.encode(batch["text"].to_pylist())
        pair_texts = batch["text_pair"].to_pylist()
        encoded_pairs = iter(self.processor.encode([p for p in pair_texts if p is not None]))
        pairs = [next(encoded_pairs) if p is not None else None for p in pair_texts]
        ids, segments, cut = [], [], []
        for text, pair in zip(texts, pairs):
            if pair is None:
                row_ids, row_cut = with_eos(text, self.max_tokens, self.eos_id)
                row_segments = [0] * len(row_ids)
            else:
                row_ids, row_segments, row_cut = pair_with_eos(
                    text, pair, self.max_tokens, self.eos_id)
            ids.append(row_ids)
            segments.append(row_segments)
            cut.append(row_cut)
        return pa.table({
            "input_ids": pa.array(ids, _IDS),
            "segment_ids": pa.array(segments, _IDS),
            "label": batch["label"],
            "truncated": pa.array(cut, pa.bool_()),
        })


@functools.lru_cache(maxsize=2)
def _encoder(model_proto: bytes, task: str, max_tokens: int) -> SentencePieceEncoder:
    return SentencePieceEncoder(model_proto, task, max_tokens)


def encode_batch(batch: pa.Table, *, model_proto: bytes, task: str, max_tokens: int) -> pa.Table:
    """`map_batches` function (Ray tasks): `SentencePieceEncoder`, built once per worker process.

    Tasks rather than an actor pool: Ray logs an ERROR line on the driver's console for every
    restartable actor whose constructor arguments sit in the object store (ray#53727), and an
    actor pool's are always there; a task is retried as an actor would be restarted."""
    return _encoder(model_proto, task, max_tokens)(batch)

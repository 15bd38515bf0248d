"""Token-budget bucketing, batch streams, rank splits and collation (pipeline.batching)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.batching import (
    BatchPosition,
    BatchStream,
    TokenColumn,
    TranslationExamples,
    load_rank_rows,
    padded_size,
    token_budget_batches,
)


def random_lengths(n: int = 500, columns: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 40, size=(n, columns))


@pytest.mark.parametrize("columns", [1, 2])
@pytest.mark.parametrize("budget", [80, 256, 1000])
def test_batches_respect_the_budget_and_hold_every_example_once(columns: int, budget: int):
    lengths = random_lengths(columns=columns)
    batches = token_budget_batches(lengths, budget, seed=3, epoch=1)
    assert all(padded_size(lengths[b]) <= budget for b in batches)
    assert all(len(b) for b in batches)
    everything = np.concatenate(batches)
    assert sorted(everything.tolist()) == list(range(len(lengths)))


def test_batches_are_deterministic_per_seed_and_epoch_and_change_across_epochs():
    lengths = random_lengths()

    def run(seed: int, epoch: int) -> list[list[int]]:
        return [b.tolist() for b in token_budget_batches(lengths, 300, seed=seed, epoch=epoch)]

    assert run(0, 0) == run(0, 0)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)


def test_bucketing_keeps_padding_low():
    """Sorted by length, the padded size stays close to the real token count."""
    lengths = random_lengths(n=2000, columns=1)
    batches = token_budget_batches(lengths, 2000, seed=0)
    padded = sum(padded_size(lengths[b]) for b in batches)
    assert padded < 1.1 * lengths.sum()


def test_without_a_seed_batches_stay_sorted_by_length():
    lengths = random_lengths(columns=1)
    batches = token_budget_batches(lengths, 200)
    maxima = [lengths[b].max() for b in batches]
    assert maxima == sorted(maxima)


def test_fairseq_counting_takes_the_longer_column_and_about_twice_the_rows():
    lengths = random_lengths()
    assert padded_size(np.array([[3, 7], [5, 2]]), "max") == 2 * 7
    assert padded_size(np.array([[3, 7], [5, 2]]), "sum") == 2 * (5 + 7)
    counted = token_budget_batches(lengths, 1000, seed=3, batch_tokens="max")
    assert all(padded_size(lengths[b], "max") <= 1000 for b in counted)
    assert sorted(np.concatenate(counted).tolist()) == list(range(len(lengths)))
    summed = token_budget_batches(lengths, 1000, seed=3)
    assert 1.6 < len(summed) / len(counted) < 2.2
    stream = BatchStream(lengths, 1000, seed=3, batch_tokens="max")
    assert [next(stream).tolist() for _ in counted] == [b.tolist() for b in counted]
    with pytest.raises(ValueError, match="example 1 alone needs 40 padded tokens"):
        token_budget_batches(np.array([[3, 4], [30, 40]]), 39, seed=0, batch_tokens="max")


def test_an_example_longer_than_the_budget_is_an_error():
    lengths = np.array([[3, 4], [30, 40]])
    with pytest.raises(ValueError, match="example 1 alone needs 70 padded tokens"):
        token_budget_batches(lengths, 60, seed=0)


def test_stream_cycles_epochs_and_resumes_from_a_position():
    lengths = random_lengths(n=50)
    stream = BatchStream(lengths, 200, seed=5)
    per_epoch = len(token_budget_batches(lengths, 200, seed=5, epoch=0))
    drawn = [next(stream).tolist() for _ in range(per_epoch + 3)]
    assert stream.position == BatchPosition(epoch=1, index=3)
    assert drawn[per_epoch:] == [b.tolist() for b in
                                 token_budget_batches(lengths, 200, seed=5, epoch=1)[:3]]
    # A stream built at a saved position continues with the very same batches.
    saved = stream.position
    expected = [next(stream).tolist() for _ in range(per_epoch)]
    resumed = BatchStream(lengths, 200, seed=5, position=saved)
    assert [next(resumed).tolist() for _ in range(per_epoch)] == expected


def test_ranks_with_equal_shards_draw_independent_length_buckets():
    """Two ranks holding the same lengths (equal shards) must not draw the same bucket at
    every step: that would make a step one bucket of twice the budget."""
    lengths = random_lengths(n=400)
    per_epoch = len(token_budget_batches(lengths, 300, seed=7))
    ranks = [BatchStream(lengths, 300, seed=7, rank=r) for r in (0, 1)]
    drawn = [[next(stream).tolist() for _ in range(per_epoch)] for stream in ranks]
    same = sum(a == b for a, b in zip(*drawn))
    assert same < per_epoch // 4, (same, per_epoch)
    # rank 0 is the single worker's stream; each rank's stream resumes like any other
    assert drawn[0] == [b.tolist() for b in token_budget_batches(lengths, 300, seed=7)]
    again = BatchStream(lengths, 300, seed=7, rank=1)
    assert [next(again).tolist() for _ in range(per_epoch)] == drawn[1]


def test_stream_refuses_an_empty_shard():
    with pytest.raises(ValueError, match="no training examples on this rank"):
        BatchStream(np.zeros((0, 2), dtype=np.int64), 100, seed=0)


def _translation_tables(rows: int, block: int) -> list[pa.Table]:
    src = [[5 + i % 7] * (1 + i % 4) + [2] for i in range(rows)]
    tgt = [[9] * (1 + i % 3) + [2] for i in range(rows)]
    ids = pa.list_(pa.int32())
    table = pa.table({"src_ids": pa.array(src, ids), "tgt_ids": pa.array(tgt, ids),
                      "ref": [f"sentence {i}" for i in range(rows)]})
    return [table.slice(start, block) for start in range(0, rows, block)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_rows_partition_the_dataset(world_size: int):
    tables = _translation_tables(rows=23, block=5)
    parts = [load_rank_rows(tables, "translation", rank, world_size, keep_refs=True)
             for rank in range(world_size)]
    indices = np.concatenate([p.index for p in parts])
    assert sorted(indices.tolist()) == list(range(23))
    for part in parts:
        for row, position in enumerate(part.index):
            assert part.refs[row] == f"sentence {position}"
            assert len(part.src[row]) == 2 + position % 4


def test_rank_rows_max_rows_takes_the_head_of_the_split():
    tables = _translation_tables(rows=23, block=5)
    parts = [load_rank_rows(tables, "translation", r, 2, max_rows=7) for r in range(2)]
    assert sorted(np.concatenate([p.index for p in parts]).tolist()) == list(range(7))


def test_classification_rows_and_collation():
    ids = pa.list_(pa.int32())
    table = pa.table({"input_ids": pa.array([[4, 5, 2], [6, 2]], ids),
                      "segment_ids": pa.array([[0, 0, 0], [0, 0]], ids),
                      "label": pa.array([1, 0], pa.int64())})
    examples = load_rank_rows([table], "classification", 0, 1)
    batch = examples.collate(np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[4, 5, 2], [6, 2, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert examples.tokens(np.array([0, 1])) == 5


def test_translation_collation_shifts_the_target_for_teacher_forcing():
    src = TokenColumn.from_lists([[7, 8, 2], [9, 2]])
    tgt = TokenColumn.from_lists([[11, 12, 13, 2], [14, 2]])
    examples = TranslationExamples(src, tgt, index=np.arange(2))
    batch = examples.collate(np.array([0, 1]), pad_id=0, bos_id=1)
    assert batch["src"].tolist() == [[7, 8, 2], [9, 2, 0]]
    assert batch["tgt_out"].tolist() == [[11, 12, 13, 2], [14, 2, 0, 0]]
    assert batch["tgt_in"].tolist() == [[1, 11, 12, 13], [1, 14, 0, 0]]
    assert examples.lengths().tolist() == [[3, 4], [2, 2]]


def test_token_column_from_a_sliced_arrow_array():
    column = pa.array([[1], [2, 3], [4, 5, 6], [7]], pa.list_(pa.int32())).slice(1, 2)
    tokens = TokenColumn.from_arrow(column)
    assert [tokens[i].tolist() for i in range(len(tokens))] == [[2, 3], [4, 5, 6]]



"""This rank's rows of the training and validation splits, read by the rank itself from the
tokenize stage's Parquet files on storage (as the evaluate stage reads its split).

Not through a Ray dataset of the fit: every rank keeps its own rows of the whole split
(`RankRows`: position % world_size == rank), so a Ray Data execution per rank only added a
start-up (16-70 s measured on 2 cores) and read tasks that need a CPU the training workers may
hold: after a node is lost, Ray Train's restarted worker group can fill what is left of the
cluster, and the reads' 1-CPU listing task then waits forever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.batching import Examples, load_rank_rows
from pipeline.training.job import TrainJob
from pipeline.training.rank import Worker

logger = logging.getLogger(__name__)


def split_tables(uri: str) -> Iterator[pa.Table]:
    """The Parquet files of a split (a file, or a folder of part files), in storage order."""
    fs, _ = storage.filesystem(uri)
    for part in storage.list_files(uri):
        if part.endswith(".parquet"):
            yield pq.read_table(storage.filesystem(part)[1], filesystem=fs)


@dataclass(frozen=True)
class RankData:
    """This rank's rows of the training and validation splits."""

    train: Examples
    validation: Examples


def load_data(job: TrainJob, worker: Worker) -> RankData:
    """This rank's rows of each split."""
    train, validation = (load_rank_rows(split_tables(job.split_uri(split)), job.task,
                                        worker.rank, worker.world_size)
                         for split in ("train", "validation"))
    data = RankData(train, validation)
    counts = worker.all_reduce([len(data.train), len(data.validation)])
    needed = (worker.world_size, 1)  # every rank draws training batches
    for split, count, low in zip(("train", "validation"), counts, needed):
        if count < low:
            raise ValueError(f"split {split} of {job.data_uri} has {int(count)} rows; at least "
                             f"{low} needed with {worker.world_size} worker(s)")
    logger.info("rank %d rows: train %d, validation %d", worker.rank, len(data.train),
                len(data.validation))
    return data

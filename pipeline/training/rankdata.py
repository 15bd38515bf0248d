"""This rank's rows of the training and validation splits, read once from the Ray Train run's
dataset (both splits in one stream, routed back to their split by file name)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.batching import Examples, RankRows, group_by_split
from pipeline.training.job import TrainJob
from pipeline.training.rank import Worker

logger = logging.getLogger(__name__)

DATASET = "splits"
"""The name of the Ray dataset (the train and validation splits, with a `path` column)."""


@dataclass(frozen=True)
class RankData:
    """This rank's rows of the training and validation splits."""

    train: Examples
    validation: Examples


def load_data(job: TrainJob, worker: Worker) -> RankData:
    """This rank's rows of each split, from one pass over the job's dataset."""
    import ray.train

    def rows(**options: Any) -> RankRows:
        return RankRows(job.task, worker.rank, worker.world_size, **options)

    train, validation = rows(), rows()
    collectors = {"train": [train], "validation": [validation]}
    shard = ray.train.get_dataset_shard(DATASET)
    for table in shard.iter_batches(batch_format="pyarrow", batch_size=None):
        for split, part in group_by_split(table, collectors):
            for collector in collectors[split]:
                collector.add(part)
    data = RankData(train.examples(), validation.examples())
    counts = worker.all_reduce([len(data.train), len(data.validation)])
    needed = (worker.world_size, 1)  # every rank draws training batches
    for split, count, low in zip(("train", "validation"), counts, needed):
        if count < low:
            raise ValueError(f"split {split} of {job.data_uri} has {int(count)} rows; at least "
                             f"{low} needed with {worker.world_size} worker(s)")
    logger.info("rank %d rows: train %d, validation %d", worker.rank, len(data.train),
                len(data.validation))
    return data

"""The one entry that trains and evaluates a typed job: what the pipeline's stages do in two
steps, in one call for a Ray Tune trial, a cluster job or a script.

    job = TrainJob(task="translation", variants=[Variant.parse("heat", {...}, "translation")],
                   model=..., train=..., eval=..., data_uri=..., ...)
    results = train_and_evaluate(job)   # variant -> steps, tokens/s, bleu, chrf, ...
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Variant
from pipeline.stages.evaluate import evaluate
from pipeline.stages.train import train
from pipeline.training.job import TrainJob

__all__ = ["TrainJob", "Variant", "train_and_evaluate"]


def train_and_evaluate(
    job: TrainJob, *, run_callbacks: list[Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Train every variant of `job` in one Ray Train run (resuming it if it was killed), then
    score each one's best weights, read back from storage; per variant both results merged.

    `run_callbacks` go to Ray Train's RunConfig (a Tune trial's `TuneReportCallback`). Starts a
    local Ray when none is running. Raises when training fails."""
    trained = train(job, run_callbacks=run_callbacks)
    scored = evaluate(job, trained)
    return {name: {**trained[name], **scored[name]} for name in trained}

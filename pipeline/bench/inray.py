"""The loops of `heat-pipeline bench train` that run inside a Ray Train worker: the pipeline's
own worker code, the plain loop in Ray's environment, and (`--interleaved`) the two stepped in
turn in one worker.

Run one after another, two loops meet different loads on a shared machine: here the host's speed
drifts by 20% over tens of seconds, so loops of 15 s each differ by that much whatever they run.
Interleaved, step i of both loops (the same batch) runs within the same fraction of a second,
in the same process, threads and niceness: their time ratio is what the pipeline's code
(DeepSpeed's engine, the worker's step) costs over a plain PyTorch loop and nothing else. The
order alternates from step to step, and each loop keeps its own torch RNG state (saved and
restored around its steps), so both still give the losses they give alone, bit for bit.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipeline.bench.trainloop import LoopRecord, plain_loop

PLAIN, PIPELINE = "plain_interleaved", "pipeline_interleaved"


def pipeline_loop(job: Any, steps: int) -> list[LoopRecord]:
    """`steps` steps through Ray Train + DeepSpeed, the pipeline's worker code."""
    return _in_ray_train(job, steps, _pipeline_worker)


def interleaved_loops(job: Any, steps: int) -> list[LoopRecord]:
    """The plain loop and the pipeline's worker stepped in turn in one Ray Train worker
    (`interleaved_worker`)."""
    return _in_ray_train(job, steps, interleaved_worker)


def plain_in_ray_loop(job: Any, steps: int) -> list[LoopRecord]:
    """The plain loop itself inside a Ray Train worker: the pipeline's workers, resources,
    threads and process (its niceness, Ray's actors beside it), no DeepSpeed and none of the
    pipeline's training code. Against `plain` it measures what Ray's environment costs;
    against `pipeline`, what the pipeline's code costs in that environment."""
    return _in_ray_train(job, steps, _plain_worker)


def _in_ray_train(job: Any, steps: int, worker_loop: Any) -> list[LoopRecord]:
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from pipeline.stages.train import scaling_config, worker_env

    trainer = TorchTrainer(
        worker_loop, train_loop_config={"job": job, "steps": steps},
        scaling_config=scaling_config(job.train),
        run_config=RunConfig(name=job.run_name, storage_path=job.storage_uri,
                             worker_runtime_env={"env_vars": worker_env(job.train)}))
    with trainer.fit().checkpoint.as_directory() as folder:
        return [LoopRecord.from_dict(r)
                for r in json.loads((Path(folder) / "records.json").read_text())]


def _pipeline_worker(config: dict[str, Any]) -> None:
    from pipeline.training.phases import Phases
    from pipeline.training.rankdata import load_data
    from pipeline.training.state import Progress
    from pipeline.training.worker import VariantRun, start_worker

    job, steps = config["job"], config["steps"]
    worker = start_worker(job)
    run = VariantRun(job, job.variants[0], worker, load_data(job, worker), Progress())
    phases = Phases(worker.device)
    report_records(worker, [LoopRecord.of("pipeline", run.timed_steps(steps, phases), phases)])


def _plain_worker(config: dict[str, Any]) -> None:
    from pipeline.training.rankdata import load_data
    from pipeline.training.worker import start_worker

    job, steps = config["job"], config["steps"]
    worker = start_worker(job)
    record = plain_loop(job, load_data(job, worker), steps, device=worker.device)
    record.name = "plain_in_ray"
    report_records(worker, [record])


def report_records(worker: Any, records: list[LoopRecord]) -> None:
    """Rank 0's records back to the driver, as a checkpoint: Ray Train's result channel."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="heat-bench-") as folder:
        checkpoint = None
        if worker.is_main:
            (Path(folder) / "records.json").write_text(json.dumps([r.to_dict() for r in records]))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({}, checkpoint=checkpoint)


def interleaved_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: config = {"job": TrainJob, "steps": int}; reports
    both loops' records (`report_records`)."""
    import torch

    from pipeline.bench.measurement import rotated
    from pipeline.bench.trainloop import PlainLoop
    from pipeline.training.phases import Phases
    from pipeline.training.rankdata import load_data
    from pipeline.training.state import Progress
    from pipeline.training.worker import VariantRun, start_worker

    job, steps = config["job"], config["steps"]
    worker = start_worker(job)
    data = load_data(job, worker)
    run = VariantRun(job, job.variants[0], worker, data, Progress())
    rng = {PIPELINE: torch.get_rng_state()}
    plain = PlainLoop(job, data, device=worker.device)
    rng[PLAIN] = torch.get_rng_state()
    phases = Phases(worker.device)
    stepper = run.stepper(phases)
    step_of = {PLAIN: plain.step, PIPELINE: lambda: next(stepper)}
    done: dict[str, list[tuple[float, int, float]]] = {PLAIN: [], PIPELINE: []}
    try:
        for i in range(steps):
            for name in rotated([PLAIN, PIPELINE], i):
                torch.set_rng_state(rng[name])
                done[name].append(step_of[name]())
                rng[name] = torch.get_rng_state()
    finally:
        stepper.close()
    report_records(worker, [LoopRecord.of(PLAIN, done[PLAIN], plain.phases),
                            LoopRecord.of(PIPELINE, done[PIPELINE], phases)])

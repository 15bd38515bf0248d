"""`bench train --interleaved`: the plain loop and the pipeline's worker code stepped in turn, in
one Ray Train worker.

Run one after another, two loops meet different loads on a shared machine: here the host's speed
drifts by 20% over tens of seconds, so loops of 15 s each differ by that much whatever they run.
Interleaved, step i of both loops (the same batch) runs within the same fraction of a second,
in the same process, threads and niceness: their time ratio is what the pipeline's code
(DeepSpeed's engine, the worker's step) costs over a plain PyTorch loop and nothing else. The
order alternates from step to step, and each loop keeps its own torch RNG state (saved and
restored around its steps), so both still give the losses they give alone, bit for bit.
"""

from __future__ import annotations

from typing import Any

PLAIN, PIPELINE = "plain_interleaved", "pipeline_interleaved"


def interleaved_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: config = {"job": TrainJob, "steps": int}; reports
    both loops' records (`trainbench.report_records`)."""
    import torch

    from pipeline.bench.trainbench import report_records
    from pipeline.bench.trainloop import LoopRecord, PlainLoop
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
            for name in (PLAIN, PIPELINE) if i % 2 == 0 else (PIPELINE, PLAIN):
                torch.set_rng_state(rng[name])
                done[name].append(step_of[name]())
                rng[name] = torch.get_rng_state()
    finally:
        stepper.close()
    report_records(worker, [LoopRecord.of(PLAIN, done[PLAIN], plain.phases),
                            LoopRecord.of(PIPELINE, done[PIPELINE], phases)])

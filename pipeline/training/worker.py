"""The Ray Train worker loop: load this rank's data once, then train each variant.

Reads as: set up the worker, restore the run's progress, and for every variant not finished yet
build a model and a DeepSpeed engine, resume it if the checkpoint was taken inside it, run
optimizer steps (validating, checkpointing, logging), save the best weights to storage, record
the result. Evaluation is its own stage (`pipeline.stages.evaluate`): it reads those weights
from storage, so a finished run can be re-scored without training again. Every rank runs exactly `max_steps` optimizer steps per variant and takes the same
validation/checkpoint decisions from all-reduced numbers, so `ray.train.report` (a barrier) is
called the same number of times everywhere.

`ray.train.report` blocks until the controller has taken the previous report (it polls every
~2 s), so it is called only for checkpoints and finished variants; per-step metrics go straight
from rank 0 to MLflow.
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline import storage
from pipeline.batching import BatchPosition, BatchStream, special_ids
from pipeline.config import Variant
from pipeline.training.checkpoints import resume_from, write_manifest
from pipeline.training.engine import EngineSteps, create_engine, quiet_deepspeed
from pipeline.training.rank import Worker
from pipeline.training.rankdata import RankData, load_data
from pipeline.training.job import TrainJob
from pipeline.training.objectives import Objective, build_objective, summed_loss
from pipeline.training.phases import NO_PHASES, Meter, NoPhases
from pipeline.training.progress import ProgressSink, step_line
from pipeline.training.outputs import BEST_CHECKPOINT_DIR, copy_to_storage, save_model
from pipeline.training.run_log import LOSS_CURVE_FILE, VariantLog
from pipeline.training.state import (
    Progress,
    RankState,
    RestoredCheckpoint,
    VariantState,
    write_progress,
    write_training_state,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Worker set-up


def start_worker(job: TrainJob) -> Worker:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(job.train.torch_threads)
    quiet_deepspeed()
    context = ray.train.get_context()
    return Worker(context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())


# ---------------------------------------------------------------------------------------------
# The loop over variants


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: config = {"job": TrainJob, "progress": the driver's
    `ProgressSink` or None}."""
    import ray.train

    job: TrainJob = config["job"]
    worker = start_worker(job)
    sink: ProgressSink | None = config.get("progress") if worker.is_main else None
    data = load_data(job, worker)
    run_uri = storage.join(job.storage_uri, job.run_name)
    restored = RestoredCheckpoint(resume_from(ray.train.get_checkpoint(), run_uri,
                                              say=sink.post if sink is not None else None))
    progress = restored.progress
    ran_any = False
    for index, variant in enumerate(job.variants, 1):
        if variant.name in progress.finished:
            logger.info("variant %s finished in an earlier attempt: skipped", variant.name)
            if sink is not None:
                sink.post(f"{_position(variant, index, job)}: finished in an earlier attempt")
            continue
        run = VariantRun(job, variant, worker, data, progress, sink=sink, index=index)
        result = run.train_and_save(restored if restored.resumes(variant.name) else None)
        progress = Progress(finished={**progress.finished, variant.name: result})
        _report(worker, progress, {"variant": variant.name, **_numbers(result)})
        ran_any = True
    restored.remove()
    if not ran_any:  # everything was done before: report once so the result holds the progress
        _report(worker, progress, {})


def _position(variant: Variant, index: int, job: TrainJob) -> str:
    return f"{variant.name} ({index}/{len(job.variants)})"


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}


def _report(worker: Worker, progress: Progress, metrics: dict[str, Any]) -> None:
    """A checkpoint with only the progress file (rank 0), e.g. when a variant has finished."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="heat-progress-") as folder:
        checkpoint = None
        if worker.is_main:
            write_progress(Path(folder), progress)
            write_manifest(Path(folder), 0, writers=1)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------
# One variant


class VariantRun:
    """Trains one variant with its own DeepSpeed engine, then saves its best weights."""

    def __init__(
        self, job: TrainJob, variant: Variant, worker: Worker, data: RankData, progress: Progress,
        *, sink: ProgressSink | None = None, index: int = 1,
    ) -> None:
        self.job, self.variant, self.worker, self.data = job, variant, worker, data
        self.progress = progress
        self.sink, self.index = sink, index
        self.attempt_start, self.attempt_first_step = time.perf_counter(), 0
        self.train = job.train
        self.model_config = job.model_config(variant)
        self.log = VariantLog.of(job, variant) if worker.is_main and job.tracked else None
        torch.manual_seed(self.train.seed)  # identical initial weights on every rank
        self.objective: Objective = build_objective(self.model_config)
        self.engine = create_engine(self.objective, self.train)
        self.steps = EngineSteps(self.engine, self.train)
        torch.manual_seed(self.train.seed + 1000 * (worker.rank + 1))  # per-rank dropout
        self.state = VariantState(variant.name, worker.world_size)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stream: BatchStream | None = None

    # -- set-up and resume ---------------------------------------------------------------------

    def _begin(self, restored: RestoredCheckpoint | None) -> None:
        position = BatchPosition()
        if restored is not None:
            self.state, rank_state, self.best_weights = restored.load_training_state(
                self.engine, self.worker.rank, self.worker.world_size
            )
            rank_state.restore_rng()
            position = rank_state.position
            logger.info("variant %s resumes at step %d", self.variant.name, self.state.step)
            self._say(f"resumes at step {self.state.step}/{self.train.max_steps}")
            if self.log is not None:
                self.log.resume()
        else:
            self._say(f"training, {self.train.max_steps} steps")
        self.attempt_start, self.attempt_first_step = time.perf_counter(), self.state.step
        self.stream = BatchStream(self.data.train.lengths(), self.train.tokens_per_batch,
                                  self.train.seed, position, self.train.batch_tokens,
                                  rank=self.worker.rank)
        self.engine.train()
        if self.log is not None:
            model = self.objective.model
            self.log.tags({
                "resolved_attention": json.dumps(model.resolved_attention, sort_keys=True),
                "num_parameters": str(sum(p.numel() for p in model.parameters())),
                "world_size": str(self.worker.world_size),
            })

    # -- training ------------------------------------------------------------------------------

    def train_and_save(self, restored: RestoredCheckpoint | None) -> dict[str, Any]:
        """Train to max_steps (or an early stop); rank 0's summary, the same on every rank."""
        self._begin(restored)
        start = time.perf_counter()
        self._train()
        result = self._summary()
        if self.worker.is_main:
            result.update(self._save_best(result))
        self.engine.destroy()
        seconds = time.perf_counter() - start
        logger.info("variant %s: %d steps trained in %.1f s (this attempt)",
                    self.variant.name, self.state.step, seconds)
        self._say(f"{self.state.step} steps in {seconds:.1f} s, best val loss "
                  f"{self.state.best_val_loss:.4f} at step {self.state.best_step}, "
                  f"{result['tokens_per_s']:,.0f} tok/s")
        # Every rank returns rank 0's result, so the progress each rank keeps is the same.
        return self.worker.gather([result])[0]

    def _train(self) -> None:
        meter = Meter()
        if self.device_is_cuda:
            torch.cuda.reset_peak_memory_stats(self.worker.device)
        while self.state.step < self.train.max_steps and not self.state.stopped_early:
            phase_start = time.perf_counter()
            loss, tokens = self._optimizer_step()
            meter.add(loss, tokens, time.perf_counter() - phase_start)
            self.state.step += 1
            step = self.state.step
            last = step == self.train.max_steps
            if step % self.train.log_every == 0 or last:
                self._log_training(self._flush(meter))
            if step % self.train.val_every == 0 or last:
                self._validate()
            if (self.train.checkpoint_every and step % self.train.checkpoint_every == 0
                    and not last and not self.state.stopped_early):
                self._flush(meter)  # the checkpoint's token and time totals are complete
                self.state.wall_seconds += time.perf_counter() - phase_start
                phase_start = time.perf_counter()
                self._checkpoint()
            self.state.wall_seconds += time.perf_counter() - phase_start

    @property
    def device_is_cuda(self) -> bool:
        return self.worker.device.type == "cuda"

    def _optimizer_step(self, phases: NoPhases = NO_PHASES) -> tuple[torch.Tensor, int]:
        """grad_accum_steps micro-batches; the optimizer steps after the last one
        (`EngineSteps`: through DeepSpeed's engine, or directly on one fp32 rank).
        The engine is in training mode (`_begin`, `_validate`): `train()` walks every module,
        0.6 ms here, too much to repeat at every step. The loss stays a tensor on the device
        (a float would wait for the GPU at every step): the meter syncs once per log."""
        assert self.stream is not None
        total, tokens = torch.zeros((), device=self.worker.device), 0
        for micro in range(1, self.train.grad_accum_steps + 1):
            with phases("data"):
                indices = next(self.stream)
                batch = self._to_device(
                    self.data.train.collate(indices, *special_ids(self.model_config)))
            with phases("forward"):
                loss = self.steps.forward(batch)
            with phases("backward"):
                self.steps.backward(loss)
            with phases("optimizer"):
                self.steps.step(boundary=micro == self.train.grad_accum_steps)
            total = total + loss.detach().float()
            tokens += self.data.train.tokens(indices)
        return total / self.train.grad_accum_steps, tokens

    def timed_steps(self, steps: int, phases: NoPhases) -> list[tuple[float, int, float]]:
        """`steps` optimizer steps from the start, nothing else (no validation, logging or
        checkpoints): (loss, tokens, seconds) of each. What `heat-pipeline bench train` times
        against a plain PyTorch loop."""
        stepper = self.stepper(phases)
        try:
            return [next(stepper) for _ in range(steps)]
        finally:
            stepper.close()

    def stepper(self, phases: NoPhases) -> Iterator[tuple[float, int, float]]:
        """`timed_steps` one step per `next()`, for a caller that does other work between
        steps (the interleaved bench); closing it destroys the engine."""
        self._begin(None)
        try:
            while True:
                start = time.perf_counter()
                loss, tokens = self._optimizer_step(phases)
                yield float(loss), tokens, time.perf_counter() - start  # synced: timed
        finally:
            self.engine.destroy()

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: tensor.to(self.worker.device) for name, tensor in batch.items()}

    def _flush(self, meter: Meter) -> dict[str, float]:
        """Add the meter's interval, summed over ranks, to the state's totals; its figures."""
        loss_sum, count, tokens, seconds = self.worker.all_reduce(
            [float(meter.loss_sum), meter.count, meter.tokens, meter.seconds]
        )
        meter.reset()
        seconds /= self.worker.world_size  # ranks step in lockstep: their mean wall time
        self.state.tokens += int(tokens)
        self.state.train_seconds += seconds
        return {"train/loss": loss_sum / max(count, 1),
                "train/tokens_per_s": tokens / max(seconds, 1e-9)}

    def _log_training(self, figures: dict[str, float]) -> None:
        (peak,) = self.worker.all_reduce([self._peak_memory_mb()], op="max")
        if self.log is not None:
            self.log.metrics({**figures, "lr": float(self.engine.get_lr()[0]),
                              "peak_mem_mb": peak}, step=self.state.step)
        if self.sink is not None:
            self.sink.post(step_line(
                variant=self.variant.name, index=self.index, count=len(self.job.variants),
                step=self.state.step, max_steps=self.train.max_steps,
                loss=figures["train/loss"], tokens_per_s=figures["train/tokens_per_s"],
                seconds=time.perf_counter() - self.attempt_start,
                steps_done=self.state.step - self.attempt_first_step))

    def _say(self, text: str) -> None:
        if self.sink is not None:
            self.sink.post(f"{_position(self.variant, self.index, self.job)}: {text}")

    def _peak_memory_mb(self) -> float:
        """GPU: peak allocated by this variant. CPU: peak RSS of the worker process so far
        (the kernel keeps one high-water mark per process, across variants)."""
        if self.device_is_cuda:
            return torch.cuda.max_memory_allocated(self.worker.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    @torch.no_grad()
    def _validate(self) -> None:
        self.engine.eval()
        total, count = summed_loss(self.engine.module, self.data.validation,
                                   self.train.tokens_per_batch, self.train.batch_tokens,
                                   self._to_device)
        self.engine.train()
        total, count = self.worker.all_reduce([total, count])
        val_loss = total / count
        state = self.state
        if state.record_validation(val_loss, self.train.early_stopping_patience):
            self.best_weights = {name: tensor.detach().float().cpu().clone() for name, tensor
                                 in self.objective.model.state_dict().items()}
        if self.log is not None:
            self.log.metrics({"val/loss": val_loss}, step=state.step)
        if state.stopped_early:
            logger.info("variant %s stops early at step %d (best %.4f at step %d)",
                        self.variant.name, state.step, state.best_val_loss, state.best_step)
            self._say(f"stops early at step {state.step} (best val loss "
                      f"{state.best_val_loss:.4f} at step {state.best_step})")

    def _checkpoint(self) -> None:
        import ray.train

        assert self.stream is not None
        progress = Progress(finished=self.progress.finished, current=copy.copy(self.state))
        with tempfile.TemporaryDirectory(prefix="heat-ckpt-") as folder:
            write_training_state(Path(folder), self.engine, self.worker.rank, progress,
                                 RankState.capture(self.stream.position), self.best_weights)
            ray.train.report(
                {"variant": self.variant.name, "step": self.state.step,
                 "val_loss": self.state.val_loss, "best_val_loss": self.state.best_val_loss},
                checkpoint=ray.train.Checkpoint.from_directory(folder),
            )

    # -- the result ----------------------------------------------------------------------------

    def _summary(self) -> dict[str, Any]:
        state = self.state
        (peak,) = self.worker.all_reduce([self._peak_memory_mb()], op="max")
        # Rounded: these are the figures the runs table and the summary show.
        return {
            "tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
            "peak_mem_mb": round(peak, 1),
            "steps": state.step,
            "train_wall_s": round(state.wall_seconds, 2),
            "best_val_loss": state.best_val_loss,
            "val_loss": state.val_loss,
            "best_step": state.best_step,
            "stopped_early": state.stopped_early,
            "resolved_attention": self.objective.model.resolved_attention,
        }

    def _best_model(self) -> torch.nn.Module:
        """A fresh fp32 model with the best validation weights (the engine's may be bf16)."""
        model = build_objective(self.model_config).model
        assert self.best_weights is not None  # the last step always validates
        model.load_state_dict(self.best_weights)
        return model

    def _save_best(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: best weights and loss curve to storage and MLflow; where the weights are."""
        result_uri = self.job.result_uri(self.variant.name)
        assert self.log is not None
        with tempfile.TemporaryDirectory(prefix="heat-result-") as tmp:
            folder = Path(tmp)
            save_model(folder, self._best_model(), self.model_config)
            self.log.plot_loss_curve(folder / LOSS_CURVE_FILE, self.variant.name)
            copy_to_storage(folder, result_uri)
            # The run's summary figures (what the runs table shows): the mean throughput of
            # the whole training, not the last interval's (`train/tokens_per_s`).
            self.log.metrics({"best_val_loss": self.state.best_val_loss,
                              "train_wall_s": summary["train_wall_s"],
                              "tokens_per_s": summary["tokens_per_s"],
                              "peak_mem_mb": summary["peak_mem_mb"]}, step=self.state.step)
            self.log.artifact(folder / LOSS_CURVE_FILE)
            self.log.artifact(folder / BEST_CHECKPOINT_DIR, BEST_CHECKPOINT_DIR)
        return {"checkpoint_uri": self.job.checkpoint_uri(self.variant.name)}

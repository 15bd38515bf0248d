"""The one place that calls `deepspeed.initialize`: config dict, optimizer, LR schedule.

The optimizer is a plain `torch.optim.AdamW` and the schedule a `LambdaLR`, handed to DeepSpeed
as client objects: DeepSpeed's fused Adam needs nvcc, and its CPU Adam a compiled extension,
while ZeRO 1-2 partition any torch optimizer's state. DeepSpeed steps the scheduler at each
optimizer step (every `grad_accum_steps` micro-batches) and saves both in its checkpoints.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from pipeline.stages.train import TrainConfig

logger = logging.getLogger(__name__)

# DeepSpeed wants a micro-batch size for its own data loader and throughput prints; batches here
# are token-budget batches of varying size built by pipeline.batching, so it is nominal.
_NOMINAL_MICRO_BATCH = 1


@dataclass(frozen=True)
class WarmupDecay:
    """LR multiplier at optimizer step `step`: linear warmup to 1, then the chosen decay.

    A callable object rather than a closure: `LambdaLR.state_dict` saves an object's fields
    (and skips plain functions), so a checkpoint records the whole schedule.
    """

    schedule: str
    warmup_steps: int
    max_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "inverse_sqrt":
            return math.sqrt(max(self.warmup_steps, 1) / (step + 1))
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        progress = min(progress, 1.0)
        if self.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def torch_clips(train: TrainConfig) -> bool:
    """Whether the training loop clips the gradients itself, with torch's
    `clip_grad_norm_`, instead of DeepSpeed: without ZeRO and in fp32 the optimizer steps with
    the parameters' own `.grad` (all-reduced in backward), and DeepSpeed's clip, a Python loop
    of per-parameter norms and an all-reduce, cost 3 ms of a 50 ms step here
    (`heat-pipeline bench train`) and rounds differently from the plain loop's. ZeRO and
    bf16 keep DeepSpeed's: their optimizers clip the partitioned fp32 gradients they hold."""
    return train.zero_stage == 0 and train.precision == "fp32" and train.grad_clip > 0


def deepspeed_config(train: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for this TrainConfig (no optimizer/scheduler: client objects)."""
    return {
        "train_micro_batch_size_per_gpu": _NOMINAL_MICRO_BATCH,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "gradient_clipping": 0.0 if torch_clips(train) else train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        # ZeRO refuses optimizers it was not tested with unless told; AdamW partitions fine.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 62,  # progress is logged by the trainer, not DeepSpeed
        "wall_clock_breakdown": False,
    }


def skip_shared_memory_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory comm op (about 2 minutes).

    On the CPU accelerator every `TorchBackend` builds `deepspeed_shm_comm` when it starts; the
    op serves only `inference_all_reduce` (AutoTP inference), never training, whose collectives
    go through torch.distributed (gloo). Marking the op incompatible makes `build_shm_op`
    return None, so DeepSpeed falls back to the process group for everything. The dict is
    DeepSpeed's own per-process probe result, built once and meant to be edited in place.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def optimizer_and_schedule(model: nn.Module, train: TrainConfig
                           ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `model`'s parameters and its warm-up/decay schedule (`WarmupDecay`): what
    DeepSpeed is handed, and what `heat-pipeline bench train`'s plain loop steps itself."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=train.lr,
        betas=(train.betas[0], train.betas[1]),
        eps=train.eps,
        weight_decay=train.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupDecay(train.schedule, train.warmup_steps, train.max_steps)
    )
    return optimizer, schedule


def create_engine(model: nn.Module, train: TrainConfig) -> DeepSpeedEngine:
    """Wrap `model` (whose forward returns the loss) in a DeepSpeed engine with AdamW + LambdaLR."""
    import deepspeed

    if not train.use_gpu:
        skip_shared_memory_comm_build()
    if train.precision != "fp32":
        # DeepSpeed casts parameters only; floating buffers (the sinusoidal position table)
        # would stay fp32, promote activations to fp32 and clash with the bf16 LayerNorm.
        model.to(torch.bfloat16 if train.precision == "bf16" else torch.float16)
    optimizer, schedule = optimizer_and_schedule(model, train)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=deepspeed_config(train)
    )
    if train.zero_stage == 0 and engine.dp_world_size == 1:
        # One rank without ZeRO: DeepSpeed would still flatten every gradient into buckets,
        # all-reduce them over a one-rank group and copy them back after each backward
        # (`heat-pipeline bench train`: about 2 ms of a 52 ms step here). ZeRO's optimizers
        # partition in that call, so it stays for them.
        engine.enable_backward_allreduce = False
    return engine


class EngineSteps:
    """A worker's forward, backward and optimizer step of one micro-batch on `engine`.

    Through DeepSpeed's engine, except on one rank without ZeRO in fp32 (`direct`): there the
    engine's forward, backward and step add nothing to the plain PyTorch calls but their
    bookkeeping (backward hooks on the loss, timers, `zero_grad` over named parameters), about
    0.8 ms of a 38 ms step here (`heat-pipeline bench train --interleaved`). The direct path
    calls the module, `backward` and the engine's own client optimizer and schedule, and keeps
    the engine's step counters as `engine.step` would, so its checkpoints (optimizer, schedule,
    `global_steps`) are DeepSpeed's as before. With ZeRO, several ranks or bf16, the engine
    partitions, reduces or casts, and every call goes through it.
    """

    def __init__(self, engine: DeepSpeedEngine, train: TrainConfig) -> None:
        self.engine, self.train = engine, train
        self.direct = (train.zero_stage == 0 and train.precision == "fp32"
                       and engine.dp_world_size == 1)
        self.clips = torch_clips(train)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.engine.module if self.direct else self.engine)(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        if self.direct:
            (loss / self.train.grad_accum_steps).backward()
        else:
            self.engine.backward(loss)

    def step(self, boundary: bool) -> None:
        """After each micro-batch; `boundary`: the last of the optimizer step's."""
        engine = self.engine
        if boundary and self.clips:
            torch.nn.utils.clip_grad_norm_(engine.module.parameters(), self.train.grad_clip)
        if not self.direct:
            engine.step()
            return
        if boundary:
            engine.optimizer.step()
            engine.lr_scheduler.step()
            engine.optimizer.zero_grad(set_to_none=True)
            engine.global_steps += 1
            engine.global_samples += engine.train_batch_size()
        engine.micro_steps += 1


def quiet_deepspeed() -> None:
    """DeepSpeed logs its whole config and every engine step at INFO; keep warnings only."""
    from deepspeed.utils import logger as deepspeed_logger

    deepspeed_logger.setLevel(logging.WARNING)

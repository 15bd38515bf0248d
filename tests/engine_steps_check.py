"""Run by tests/test_engine_steps.py in its own process (torch.distributed is process-global):
`EngineSteps`' direct path against DeepSpeed's engine on the same model and batches, and a
DeepSpeed checkpoint taken mid-run by the direct path resumed to the same numbers. Prints one
JSON object."""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

from heat.models import Seq2SeqConfig, Seq2SeqTransformer
from pipeline.config import TrainConfig
from pipeline.training.engine import EngineSteps, create_engine, quiet_deepspeed
from pipeline.training.objectives import TranslationObjective

MODEL = Seq2SeqConfig(d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                      ffn_dim=64, dropout=0.1, max_length=16, vocab_size=50)


def batches(count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [{name: torch.randint(3, 50, (4, 6), generator=generator)
             for name in ("src", "tgt_in", "tgt_out")} for _ in range(count)]


def run(train: TrainConfig, direct: bool, data: list, *, resume_at: int = 0,
        folder: str = "") -> dict:
    """Micro-batches of `data`, an optimizer step every grad_accum_steps; with `resume_at`, a
    checkpoint after that many micro-batches, loaded into a fresh engine that goes on."""
    def fresh() -> tuple:
        torch.manual_seed(0)
        engine = create_engine(TranslationObjective(Seq2SeqTransformer(MODEL)), train)
        steps = EngineSteps(engine, train)
        steps.direct = direct
        engine.train()
        return engine, steps

    engine, steps = fresh()
    torch.manual_seed(1)
    losses = []
    for i, batch in enumerate(data):
        if resume_at and i == resume_at:
            engine.save_checkpoint(folder, tag="mid")
            rng = torch.get_rng_state()
            engine, steps = fresh()
            engine.load_checkpoint(folder, tag="mid")
            torch.set_rng_state(rng)
        loss = steps.forward(batch)
        steps.backward(loss)
        steps.step(boundary=(i + 1) % train.grad_accum_steps == 0)
        losses.append(loss.item())
    return {"losses": losses, "global_steps": engine.global_steps,
            "micro_steps": engine.micro_steps, "global_samples": engine.global_samples,
            "schedule_epoch": engine.lr_scheduler.last_epoch, "lr": engine.get_lr()[0],
            "weights": sum(float(p.double().sum()) for p in engine.module.parameters())}


def main() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo")
    quiet_deepspeed()
    torch.set_num_threads(1)
    train = TrainConfig(zero_stage=0, precision="fp32", grad_accum_steps=2, grad_clip=1.0,
                        warmup_steps=3, lr=1e-2)
    data = batches(10)
    assert EngineSteps(create_engine(TranslationObjective(Seq2SeqTransformer(MODEL)), train),
                       train).direct
    with tempfile.TemporaryDirectory() as folder:
        result = {"engine": run(train, False, data), "direct": run(train, True, data),
                  "direct_resumed": run(train, True, data, resume_at=6, folder=folder)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

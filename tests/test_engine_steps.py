"""`EngineSteps`: on one fp32 rank without ZeRO the worker steps the client optimizer and
schedule itself instead of through DeepSpeed's engine; the numbers, the engine's counters and
its checkpoints must stay what the engine gives (real DeepSpeed, gloo, its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ray_head import free_port


def test_direct_steps_equal_the_engines_and_resume_from_its_checkpoint():
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "engine_steps_check.py"),
                           str(free_port())], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    engine, direct, resumed = result["engine"], result["direct"], result["direct_resumed"]
    # 10 micro-batches, 2 per optimizer step, dropout on, a clip and a warm-up: the same
    # losses and weights to the last bit, and the counters DeepSpeed's checkpoints record.
    assert direct == engine
    assert (direct["global_steps"], direct["micro_steps"], direct["schedule_epoch"]) == (5, 10, 5)
    # Checkpointed after 3 optimizer steps, loaded into a fresh engine: it goes on exactly
    # (DeepSpeed's checkpoints keep global_steps and samples, not micro_steps: 4 after it).
    assert resumed.pop("micro_steps") == 4
    assert resumed == {k: v for k, v in direct.items() if k != "micro_steps"}
    assert len(set(direct["losses"])) > 5  # it trained: the losses moved

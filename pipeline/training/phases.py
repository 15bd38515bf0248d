"""Where an optimizer step's time goes (data, forward, backward, optimizer), and the
training loss, tokens and seconds of the steps since the last log (`Meter`).

The training loops (`pipeline.training.worker`, the benchmark's plain loop) wrap each part of a
step in `phases("name")`. The default `NO_PHASES` does nothing; `Phases` adds up wall time per
name, synchronising a CUDA device first so that asynchronous kernels are charged to the part
that launched them. What a step spends outside its named parts (host syncs, bookkeeping,
logging) is its `framework` time: the step's wall time minus the named parts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

NAMES = ("data", "forward", "backward", "optimizer")
PARTS = (*NAMES, "framework")
"""What `Phases.split` reports."""


class NoPhases:
    """Times nothing."""

    def __call__(self, name: str) -> Any:
        return nullcontext()


NO_PHASES = NoPhases()


class Phases(NoPhases):
    """Seconds per named part, summed over every step it timed."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.seconds = dict.fromkeys(NAMES, 0.0)
        self._cuda = device is not None and device.type == "cuda"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def split(self, wall_seconds: float) -> dict[str, float]:
        """Each part's seconds and `framework`: what `wall_seconds` has on top of them."""
        return {**self.seconds, "framework": max(0.0, wall_seconds - sum(self.seconds.values()))}


class Meter:
    """Training loss, tokens and step seconds since the last log, on this rank."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.count, self.tokens, self.seconds = 0.0, 0, 0, 0.0

    def add(self, loss: torch.Tensor, tokens: int, seconds: float) -> None:
        self.loss_sum += loss
        self.count += 1
        self.tokens += tokens
        self.seconds += seconds

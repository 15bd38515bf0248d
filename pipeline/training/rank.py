"""`Worker`: what the training loop knows of its place among the ranks (rank, world size,
device) and the few collectives it needs. Plain `torch.distributed`, no Ray."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Worker:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Element-wise sum (or max) over ranks of a few floats, in float64.

        The tensor lives on the worker's device: NCCL reduces CUDA tensors only."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def gather(self, items: list[Any]) -> list[Any]:
        """All ranks' items concatenated (rank order); small Python objects only."""
        if not dist.is_initialized() or self.world_size == 1:
            return items
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

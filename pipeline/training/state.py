"""What a checkpoint holds besides DeepSpeed's own files, and how it is written and read back.

A checkpoint folder (one per `ray.train.report`, merged by Ray from every rank's folder):

    progress.json          rank 0: finished variants with their results; the current variant's
                           step, best validation loss, patience counter, accumulated times
    best_model.pt          rank 0: the current variant's best weights so far (fp32 state dict)
    ranks/rank_<r>.pt      every rank: its batch-stream position and RNG states
    manifests/rank_<r>.json  every rank, written last: its files and their sizes (a folder is
                           complete when all are there: `pipeline.training.checkpoints`)
    engine/...             DeepSpeed: module, optimizer shards (ZeRO), LR scheduler

A checkpoint reported when a variant finishes holds only progress.json: the next variant starts
fresh, and a resumed run skips the finished ones.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.batching import BatchPosition
from pipeline.training.checkpoints import write_manifest

PROGRESS_FILE = "progress.json"
BEST_WEIGHTS_FILE = "best_model.pt"
ENGINE_TAG = "engine"


@dataclass
class VariantState:
    """Training state of the variant in progress, identical on every rank."""

    variant: str
    world_size: int
    step: int = 0
    best_val_loss: float = float("inf")
    best_step: int = 0
    val_loss: float = float("inf")
    """The latest validation loss (what a Tune scheduler such as ASHA compares)."""
    validations_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    """Seconds spent in optimizer steps (tokens/s divides by this)."""
    wall_seconds: float = 0.0
    """Seconds of the whole training phase: steps, validation, checkpoints."""
    tokens: int = 0
    """Real (non-pad) tokens trained on, summed over ranks."""

    def record_validation(self, val_loss: float, patience: int) -> bool:
        """Track the best loss and early stopping; True when val_loss is a new best.

        patience > 0 stops the variant after that many validations in a row without a new
        best; 0 never stops early.
        """
        self.val_loss = val_loss
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val_loss, self.step
            self.validations_without_improvement = 0
            return True
        self.validations_without_improvement += 1
        self.stopped_early = 0 < patience <= self.validations_without_improvement
        return False


@dataclass
class Progress:
    """Results of the finished variants and the state of the current one."""

    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: VariantState | None = None

    def to_json(self) -> str:
        raw = {"finished": self.finished,
               "current": dataclasses.asdict(self.current) if self.current else None}
        return json.dumps(raw, indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> Progress:
        raw = json.loads(text)
        current = VariantState(**raw["current"]) if raw["current"] else None
        return cls(finished=raw["finished"], current=current)


@dataclass
class RankState:
    """Per-rank state: the batch stream's position and the RNGs (dropout masks)."""

    position: BatchPosition
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None

    @classmethod
    def capture(cls, position: BatchPosition) -> RankState:
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        return cls(position, torch.get_rng_state(), cuda)

    def restore_rng(self) -> None:
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.cuda_rng)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.position.epoch, "index": self.position.index,
                "torch_rng": self.torch_rng, "cuda_rng": self.cuda_rng}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RankState:
        return cls(BatchPosition(raw["epoch"], raw["index"]), raw["torch_rng"], raw["cuda_rng"])


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / "ranks" / f"rank_{rank}.pt"


def write_progress(folder: Path, progress: Progress) -> None:
    (folder / PROGRESS_FILE).write_text(progress.to_json(), encoding="utf-8")


def write_training_state(
    folder: Path,
    engine: Any,
    rank: int,
    progress: Progress,
    rank_state: RankState,
    best_weights: dict[str, torch.Tensor] | None,
) -> None:
    """Every rank calls this (DeepSpeed's save is collective); rank 0 adds the shared files."""
    engine.save_checkpoint(str(folder), tag=ENGINE_TAG)
    _rank_file(folder, rank).parent.mkdir(parents=True, exist_ok=True)
    torch.save(rank_state.to_dict(), _rank_file(folder, rank))
    if rank == 0:
        write_progress(folder, progress)
        if best_weights is not None:
            torch.save(best_weights, folder / BEST_WEIGHTS_FILE)
    assert progress.current is not None
    write_manifest(folder, rank, writers=progress.current.world_size)


class RestoredCheckpoint:
    """The run's latest checkpoint copied to a local folder (or nothing, on a fresh run).

    Copied once at worker start because resuming a variant reads it after the data has loaded
    and the engine exists; `Checkpoint.as_directory` would tie the files to a `with` block.
    """

    def __init__(self, checkpoint: Any | None) -> None:
        self.folder: Path | None = None
        self.progress = Progress()
        if checkpoint is not None:
            self.folder = Path(tempfile.mkdtemp(prefix="heat-resume-"))
            checkpoint.to_directory(str(self.folder))
            self.progress = Progress.from_json((self.folder / PROGRESS_FILE).read_text("utf-8"))

    def resumes(self, variant: str) -> bool:
        current = self.progress.current
        return self.folder is not None and current is not None and current.variant == variant

    def load_training_state(
        self, engine: Any, rank: int, world_size: int
    ) -> tuple[VariantState, RankState, dict[str, torch.Tensor] | None]:
        """Restore the engine in place; return the variant state, this rank's state and the
        best weights so far."""
        assert self.folder is not None and self.progress.current is not None
        state = self.progress.current
        if state.world_size != world_size:
            raise RuntimeError(
                f"the checkpoint of variant {state.variant} was written by {state.world_size} "
                f"workers; resume it with train.num_workers={state.world_size} (ZeRO shards the "
                f"optimizer state by rank), not {world_size}"
            )
        path, _ = engine.load_checkpoint(str(self.folder), tag=ENGINE_TAG)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no engine checkpoint in {self.folder}")
        rank_state = RankState.from_dict(
            torch.load(_rank_file(self.folder, rank), weights_only=True)
        )
        best_file = self.folder / BEST_WEIGHTS_FILE
        best = torch.load(best_file, weights_only=True) if best_file.exists() else None
        return dataclasses.replace(state), rank_state, best

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


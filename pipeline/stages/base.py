"""The interface every stage implements, and what a stage of one task gets to read.

A stage declares the config sections it reads, the source files its output depends on, the
inputs its output is keyed by, how to run it into a folder and how to load what a finished run
left there. `pipeline.run` loops over `pipeline.stages.STAGES` in order and derives everything
else from these declarations: the cache keys and folders, the code fingerprints, the config keys
an error is reported under, the log lines. A new stage is one module defining one `Stage`,
listed once in `pipeline.stages.STAGES`.

Folders: a stage shared by every run (a pure function of its inputs: prepare, tokenize) writes to
`<root>/<stage>/<key>`; a stage of one run (an experiment: train, evaluate) writes to
`<root>/<stage>/<run name>/<task>-<key>`, so a new run trains again and `--resume` finds the
killed run's folder.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline import stagecache

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig, TaskConfig
    from pipeline.tracking import PipelineTracker


@dataclass
class StageContext:
    """One task of one run, as its stages see it."""

    config: PipelineConfig
    task: TaskConfig
    run_name: str
    tracker: PipelineTracker
    cpus: int
    """CPUs of the Ray instance (the data stages' parallelism)."""
    seed: int | None = None
    """The repetition of a run with `seeds` (the task's `train.seed` then); None without."""
    eval_label: str = ""
    """'' for the run's own evaluation; otherwise the name of a re-scoring with other eval
    settings (`heat-pipeline evaluate`), under which its scores are tracked."""
    outcomes: dict[str, stagecache.StageOutcome] = field(default_factory=dict)
    """The outcomes of the stages run so far, by stage name."""

    @property
    def label(self) -> str:
        """The task's name, with the seed in a run with `seeds` (`translation seed 1`): what its
        stage lines, training progress and diagnostics rows are labelled with."""
        return self.task.name if self.seed is None else f"{self.task.name} seed {self.seed}"


class Stage(ABC):
    """One step of a task: keyed, cached, resumable."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]]
    """The task's config sections it reads; a `ConfigError` it raises about one of them is
    reported under the task's key (`tasks.<task>.<section>...`)."""
    code: ClassVar[tuple[str, ...]]
    """Source globs (relative to the repository) its output depends on: an edit there
    invalidates the cached outputs."""
    per_run: ClassVar[bool] = False
    """False: shared by every run (a pure function of its inputs); True: one output per run."""
    keep_partial: ClassVar[bool] = False
    """Keep what an interrupted attempt wrote (train resumes from its checkpoints)."""

    @abstractmethod
    def inputs(self, context: StageContext) -> dict[str, Any]:
        """Everything the output depends on besides the code: hashed into its key."""

    @abstractmethod
    def run(self, context: StageContext, out_uri: str) -> dict[str, Any]:
        """Compute the output into `out_uri`; a JSON-able result (kept in the folder's marker)."""

    def load(self, uri: str) -> Any:
        """What a finished attempt left in `uri`, typed (default: the marker's result)."""
        return stagecache.read_result(uri)


def result_dict(result: Any) -> dict[str, Any]:
    """A stage result's JSON-able fields for its marker (a SentencePiece model's bytes stay out)."""
    return {k: v for k, v in dataclasses.asdict(result).items() if not isinstance(v, bytes)}

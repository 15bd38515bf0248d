"""Pipeline stages, in the order they run for every task (DESIGN.md section 5).

Each module defines one `pipeline.stages.base.Stage`; `pipeline.run` loops over `STAGES`.
"""

from pipeline.stages.base import Stage, StageContext
from pipeline.stages.evaluate import EvaluateStage
from pipeline.stages.prepare import PrepareStage
from pipeline.stages.tokenize import TokenizeStage
from pipeline.stages.train import TrainStage

STAGES: tuple[Stage, ...] = (PrepareStage(), TokenizeStage(), TrainStage(), EvaluateStage())

__all__ = ["STAGES", "Stage", "StageContext"]

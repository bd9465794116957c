"""Training stages: one LightningModule per stage, all wrapping the same backbone."""

from lightning_most.stages.base import OptimizerConfig, StageModule
from lightning_most.stages.stage1 import Stage1Module
from lightning_most.stages.stage2 import Stage2Module

__all__ = ["OptimizerConfig", "Stage1Module", "Stage2Module", "StageModule"]

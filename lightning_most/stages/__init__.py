"""Training stages: one LightningModule per stage, all wrapping the same backbone."""

from lightning_most.stages.base import OptimizerConfig, StageModule
from lightning_most.stages.stage1 import Stage1Module

__all__ = ["OptimizerConfig", "Stage1Module", "StageModule"]

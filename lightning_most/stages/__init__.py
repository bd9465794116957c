"""Training stages: one LightningModule per stage, all wrapping the same backbone."""

from lightning_most.stages.base import StageModule
from lightning_most.stages.losses import CTCConfig
from lightning_most.stages.optimizer import OptimizerConfig
from lightning_most.stages.stage1 import Stage1Module
from lightning_most.stages.stage2 import Stage2Module

__all__ = ["CTCConfig", "OptimizerConfig", "Stage1Module", "Stage2Module", "StageModule"]

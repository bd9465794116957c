"""Lhotse-based data pipelines for lightning_most."""

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.dataset import MostDataset
from datamodules.embedded import EmbeddedCorpusConfig, prepare_embedded_corpus
from datamodules.embedded_datamodule import EmbeddedDataModule
from datamodules.instruction_datamodule import EmbeddedInstructionDataModule
from datamodules.mixing import STAGE1_TASK_WEIGHTS, STAGE2_TASK_WEIGHTS, SourceConfig
from datamodules.units import UnitsConfig

__all__ = [
    "STAGE1_TASK_WEIGHTS",
    "STAGE2_TASK_WEIGHTS",
    "EmbeddedCorpusConfig",
    "EmbeddedDataModule",
    "EmbeddedInstructionDataModule",
    "LoaderConfig",
    "MostDataModule",
    "MostDataset",
    "SourceConfig",
    "UnitsConfig",
    "prepare_embedded_corpus",
]

"""Command-line entry point: `python -m lightning_most {fit,validate,test,predict,prepare} ...`.

fit / validate / test / predict are LightningCLI (omegaconf parser mode, so configs can
interpolate). The other commands are thin wrappers: `prepare` builds the embedded corpus,
`prepare_instructions` the (spoken) instruction data of stage 2,
`export_webdataset` writes cuts as webdataset tar shards,
`synthesize` / `transcribe` / `evaluate` use a trained checkpoint, `convert` turns a local Hugging
Face checkpoint into backbone weights for `init_from`, `grid` runs ablation grids.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lightning_most.stages.base import StageModule

EXTRA_COMMANDS = {
    "prepare": "datamodules.embedded:main",
    "prepare_instructions": "datamodules.spoken_instructions:main",
    "export_webdataset": "datamodules.webdataset_shards:main",
    "synthesize": "lightning_most.commands.synthesize:main",
    "transcribe": "lightning_most.commands.transcribe:main",
    "evaluate": "lightning_most.commands.evaluate:main",
    "convert": "lightning_most.convert:main",
    "export": "lightning_most.export:main",
    "grid": "lightning_most.grid:main",
    "partition": "lightning_most.partitions:main",
    "upcycle": "lightning_most.upcycling:main",
    "spoken_lm_sets": "lightning_most.evaluation.spoken_lm_miniature:main",
}


def _run_extra(command: str, argv: list[str]) -> None:
    module_name, func = EXTRA_COMMANDS[command].split(":")
    module = __import__(module_name, fromlist=[func])
    getattr(module, func)(argv)


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI on `args` (default: sys.argv[1:])."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        _run_extra(argv[0], argv[1:])
        return None
    return LightningCLI(
        model_class=StageModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )

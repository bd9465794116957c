"""Command-line entry point: `python -m lightning_most {fit,validate,test,predict,prepare} ...`.

fit / validate / test / predict are LightningCLI (omegaconf parser mode, so configs can
interpolate). The other commands are thin wrappers: `prepare` builds the embedded corpus,
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
    "synthesize": "lightning_most.commands.synthesize:main",
    "transcribe": "lightning_most.commands.transcribe:main",
    "evaluate": "lightning_most.commands.evaluate:main",
    "convert": "lightning_most.checkpoints:main",
    "grid": "lightning_most.grid:main",
}


def _run_extra(command: str, argv: list[str]) -> None:
    module_name, func = EXTRA_COMMANDS[command].split(":")
    module = __import__(module_name, fromlist=[func])
    getattr(module, func)(argv)


def data_feature_dim(data: pl.LightningDataModule) -> int | None:
    """F of the data's `audio_features` (None when the data cannot say before reading its stored features)."""
    try:
        return getattr(data, "feature_dim", None)
    except ValueError:  # kind='precomputed': set model.init_args.backbone_overrides.audio_feature_dim
        return None


class MostCLI(LightningCLI):
    """LightningCLI whose model takes the data module's feature width, unit count and tokenizer (linked, not typed twice)."""

    def add_arguments_to_parser(self, parser) -> None:
        """Link `data.feature_dim` / `data.num_units` / `data.tokenizer` to the model's init arguments."""
        links = {
            "audio_feature_dim": data_feature_dim,
            "num_audio_units": lambda data: getattr(data, "num_units", None),
            "tokenizer": lambda data: getattr(data, "tokenizer", "byte"),
        }
        for target, compute in links.items():
            parser.link_arguments("data", f"model.init_args.{target}", compute_fn=compute, apply_on="instantiate")


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI on `args` (default: sys.argv[1:])."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in EXTRA_COMMANDS:
        _run_extra(argv[0], argv[1:])
        return None
    return MostCLI(
        model_class=StageModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )

"""Command-line entry point: `python -m lightning_most {fit,validate,test,predict,prepare,...} ...`.

fit / validate / test / predict are LightningCLI (omegaconf parser mode, so configs can
interpolate). The other commands are thin wrappers: `synthesize` / `transcribe` / `evaluate` use a
trained checkpoint, `convert` turns a local Hugging Face checkpoint into backbone weights for
`init_from`, `grid` runs ablation grids, `partition` / `upcycle` / `spoken_lm_sets` (see their --help).
Packages add commands through the entry-point group `lightning_most.commands` (`pyproject.toml`):
that is how the data commands are found (`prepare` builds the embedded corpus, `prepare_instructions`
the (spoken) instruction data of stage 2, `export_webdataset` writes cuts as webdataset tar shards),
because `lightning_most` never imports `datamodules`.
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.metadata import entry_points

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lightning_most.stages.base import StageModule

COMMAND_GROUP = "lightning_most.commands"
"""Entry-point group of the commands other packages add (name = "module:function taking argv")."""

EXTRA_COMMANDS = {
    "synthesize": "lightning_most.commands.synthesize:main",
    "transcribe": "lightning_most.commands.transcribe:main",
    "chat": "lightning_most.commands.chat:main",
    "evaluate": "lightning_most.commands.evaluate:main",
    "convert": "lightning_most.convert:main",
    "grid": "lightning_most.grid:main",
    "partition": "lightning_most.partitions:main",
    "upcycle": "lightning_most.upcycling:main",
    "spoken_lm_sets": "lightning_most.evaluation.spoken_lm_miniature:main",
}
"""The commands of this package besides LightningCLI's: name -> "module:function taking argv"."""


def extra_commands() -> dict[str, str]:
    """Every non-LightningCLI command: this package's and those installed packages declare in COMMAND_GROUP."""
    declared = {point.name: point.value for point in entry_points(group=COMMAND_GROUP)}
    return {**declared, **EXTRA_COMMANDS}


def _run_extra(target: str, argv: list[str]) -> None:
    module_name, func = target.split(":")
    getattr(import_module(module_name), func)(argv)


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
    commands = extra_commands()
    if argv and argv[0] in commands:
        _run_extra(commands[argv[0]], argv[1:])
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

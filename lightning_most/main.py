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
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from lightning_most.commands.common import USAGE_ERROR
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


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI on `args` (default: sys.argv[1:])."""
    argv = sys.argv[1:] if args is None else list(args)
    commands = extra_commands()
    if argv and argv[0] in commands:
        _run_extra(commands[argv[0]], argv[1:])
        return None
    try:
        return LightningCLI(
            model_class=StageModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},  # errors: below, without the usage
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except ArgumentError as error:  # an unknown key, a wrong type: jsonargparse's message names the key first
        command = " ".join(argv[:1]) if argv and argv[0] in ("fit", "validate", "test", "predict") else ""
        print(f"error: {error}\n(`python -m lightning_most {command} --help` lists the options)".replace("  ", " "),
              file=sys.stderr)
        sys.exit(USAGE_ERROR)
    except ValueError as error:
        if not _is_rejected_config(error):
            raise
        print(f"error: {error.__cause__}", file=sys.stderr)  # the class's own message: the key and the fix
        sys.exit(USAGE_ERROR)


def _is_rejected_config(error: ValueError) -> bool:
    """Whether jsonargparse could not build a configured class because the class refused its arguments (its
    ValueError is the cause; jsonargparse's message then lists a page of the parsed config after it)."""
    return isinstance(error.__cause__, ValueError) and "Given value" in str(error)

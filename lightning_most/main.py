"""Command-line entry point: `python -m lightning_most {fit,validate,test,predict,prepare,...} ...`.

fit / validate / test / predict are LightningCLI (omegaconf parser mode, so configs can
interpolate). The other commands are thin wrappers, each with its own `--help`; `--help` lists them
all, one line each. This package's are in EXTRA_COMMANDS. Packages add commands through the
entry-point group `lightning_most.commands` (`pyproject.toml`): that is how the data commands are
found (`prepare` builds the embedded corpus, `prepare_instructions` the (spoken) instruction data of
stage 2, `export_webdataset` writes cuts as webdataset tar shards), because `lightning_most` never
imports `datamodules`; their one-line help is the first line of the command function's docstring.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path
from typing import NoReturn

import lightning.pytorch as pl
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_most.commands.common import USAGE_ERROR
from lightning_most.errors import UnusableDataError, user_message
from lightning_most.stages.base import StageModule

COMMAND_GROUP = "lightning_most.commands"
"""Entry-point group of the commands other packages add (name = "module:function taking argv")."""


@dataclass(frozen=True)
class Command:
    """A non-LightningCLI command: the function that takes its argv, and its one-line help."""

    target: str
    """"module:function"; the function parses argv itself (so `COMMAND --help` is its own)."""
    summary: str


EXTRA_COMMANDS = {
    "synthesize": Command("lightning_most.commands.synthesize:main", "Speak texts into a wav file with a trained checkpoint."),
    "transcribe": Command("lightning_most.commands.transcribe:main", "Transcribe audio files with a trained checkpoint."),
    "chat": Command("lightning_most.commands.chat:main", "Ask a trained checkpoint a written or spoken question."),
    "evaluate": Command(
        "lightning_most.commands.evaluate:main", "Score a checkpoint on ASR, TTS, spoken-LM and spoken QA."
    ),
    "convert": Command(
        "lightning_most.convert:main", "Convert a Hugging Face DeepSeek-V2 / Llama folder to backbone weights."
    ),
    "export": Command("lightning_most.export:main", "Write a trained backbone as a Hugging Face folder."),
    "grid": Command("lightning_most.grid:main", "Run a config under each ablation and seed, then tabulate."),
    "partition": Command("lightning_most.partitions:main", "Expert groups per modality from a model's routing."),
    "upcycle": Command("lightning_most.upcycling:main", "Build an MoE backbone from a dense one (sparse upcycling)."),
    "spoken_lm_sets": Command(
        "lightning_most.evaluation.spoken_lm_miniature:main", "Build the offline spoken-LM pair sets."
    ),
}
"""This package's commands besides LightningCLI's."""


def _docstring_summary(target: str) -> str:
    """First line of the docstring of `target`'s function, read from its source without running the module."""
    module_name, func = target.split(":")
    spec = find_spec(module_name)
    if spec is None or spec.origin is None:
        return f"({module_name} is not importable)"
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return (ast.get_docstring(node) or "").strip().split("\n")[0]
    return ""


def extra_commands() -> dict[str, Command]:
    """Every non-LightningCLI command: this package's and those installed packages declare in COMMAND_GROUP."""
    declared = {point.name: Command(point.value, "") for point in entry_points(group=COMMAND_GROUP)}
    return {**declared, **EXTRA_COMMANDS}


def commands_help(commands: dict[str, Command]) -> str:
    """The `--help` section listing the extra commands, one line each."""
    width = max(len(name) for name in commands)
    lines = ["other commands (`python -m lightning_most COMMAND --help` for their options):"]
    for name, command in sorted(commands.items()):
        lines.append(f"  {name:<{width}}  {command.summary or _docstring_summary(command.target)}")
    return "\n".join(lines)


class _HelpFormatter(DefaultHelpFormatter):
    """Keeps the line breaks of the description and the epilog (the command list)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


def _run_extra(target: str, argv: list[str]) -> None:
    module_name, func = target.split(":")
    getattr(import_module(module_name), func)(argv)


def data_feature_dim(data: pl.LightningDataModule) -> int | None:
    """F of the data's `audio_features` (None when the data cannot say before reading its stored features)."""
    try:
        return getattr(data, "feature_dim", None)
    except ValueError:  # kind='precomputed': set model.init_args.backbone_overrides.audio_feature_dim
        return None


@dataclass(frozen=True)
class DataLink:
    """A model init argument the CLI takes from the data module: how, and where the user sets it instead."""

    compute: Callable[[pl.LightningDataModule], object]
    set_instead: str


DATA_LINKS = {
    "audio_feature_dim": DataLink(
        data_feature_dim, "the data's features (precomputed ones: model.init_args.backbone_overrides.audio_feature_dim)"
    ),
    "num_audio_units": DataLink(
        lambda data: getattr(data, "num_units", None),
        "the data's unit count (no unit quantizer: model.init_args.backbone_overrides.num_audio_units)",
    ),
    "tokenizer": DataLink(lambda data: getattr(data, "tokenizer", "byte"), "data.init_args.tokenizer"),
}
"""model.init_args.<name> -> its link from the data module (`MostCLI`)."""


class MostCLI(LightningCLI):
    """LightningCLI whose model takes the data module's feature width, unit count and tokenizer (linked, not typed twice)."""

    def add_arguments_to_parser(self, parser) -> None:
        """Link `data.feature_dim` / `data.num_units` / `data.tokenizer` to the model's init arguments."""
        for target, link in DATA_LINKS.items():
            parser.link_arguments("data", f"model.init_args.{target}", compute_fn=link.compute, apply_on="instantiate")

    def instantiate_classes(self) -> None:
        """Instantiate, then refuse a linked argument given on the model with another value than the data's
        (jsonargparse would silently replace it; a saved config.yaml repeats the linked values, which is fine)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        init_args = (config.get("model") or {}).get("init_args") or {}
        given = {target: init_args.get(target) for target in DATA_LINKS}
        super().instantiate_classes()
        defaults = inspect.signature(StageModule).parameters
        for target, value in given.items():
            if value not in (None, defaults[target].default) and value != DATA_LINKS[target].compute(self.datamodule):
                self.parser.error(
                    f"model.init_args.{target}={value!r}: this argument comes from the data module (linked); remove "
                    f"it and set {DATA_LINKS[target].set_instead}"
                )


class ErrorFirstParser(LightningArgumentParser):
    """Prints a parse error first (the key, what is wrong, the fix), then a pointer to `--help`, instead of
    after jsonargparse's ~50-line usage."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Write `error: ...` to stderr and exit 2 (an inner parser, which does not exit, raises as before)."""
        if not self.exit_on_error:
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        headline = parse_error_headline(message, prog)
        details = "" if headline == message else "\n" + message
        sys.stderr.write(f"error: {headline}\n(`{prog} --help` lists the accepted options){details}\n")
        sys.exit(USAGE_ERROR)


TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
"""How a parse error names the type a key expected."""


def parse_error_headline(message: str, prog: str) -> str:
    """One line naming the key and the fix for jsonargparse's unknown-key and wrong-type messages; else `message`."""
    key = re.match(r'Parser key "([^"]+)":', message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    class_path = re.search(r"class_path '([^']+)'", message)
    wrong_type = re.match(r'Parser key "([^"]+)":\s*Expected a <class \'(\w+)\'>\. Got value: (.*)', message)
    if key and unknown and class_path:
        return (
            f"{key[1]}.init_args.{unknown[1]}: {class_path[1]} has no argument '{unknown[1]}'; remove it or fix "
            f"its spelling (`{prog} --{key[1]}.help {class_path[1]}` lists the arguments)"
        )
    if wrong_type:
        kind = TYPE_WORDS.get(wrong_type[2], f"a {wrong_type[2]}")
        return f"{wrong_type[1]} must be {kind}, got {wrong_type[3]!r}: give {kind} (`--{wrong_type[1]} VALUE`)"
    return message


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI on `args` (default: sys.argv[1:])."""
    argv = sys.argv[1:] if args is None else list(args)
    commands = extra_commands()
    if argv and argv[0] in commands:
        _run_extra(commands[argv[0]].target, argv[1:])
        return None
    parser_kwargs = {"parser_mode": "omegaconf", "prog": "python -m lightning_most"}
    if not argv or argv[0] in ("-h", "--help"):  # the top-level help also lists the other commands
        parser_kwargs |= {
            "description": "MoST speech + text models: LightningCLI's subcommands, and the other commands below.",
            "epilog": commands_help(commands),
            "formatter_class": _HelpFormatter,
        }
    try:
        return MostCLI(
            model_class=StageModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
            parser_class=ErrorFirstParser,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except UnusableDataError as error:  # e.g. every shard of a source torn: the source named, not a traceback
        print(f"error: {user_message(error)}", file=sys.stderr)
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

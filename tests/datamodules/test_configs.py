"""Every shipped conf/data YAML parses: recipe configs as RecipeConfig, data sections into their DataModule."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from datamodules.datamodule import MostDataModule
from datamodules.embedded import main as prepare_main
from datamodules.recipes import RecipeConfig

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


@pytest.mark.parametrize("path", sorted((CONF / "prepare").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_configs_parse(path):
    parser = ArgumentParser()
    parser.add_class_arguments(RecipeConfig, None)
    args = parser.parse_path(path)
    assert args.corpus == path.stem and "EDIT" in path.read_text()


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_data_sections_build_their_data_module(path):
    parser = ArgumentParser()
    parser.add_subclass_arguments(MostDataModule, "data")
    module = parser.instantiate(parser.parse_path(path)).data
    assert isinstance(module, MostDataModule)
    assert abs(sum(module.task_weights.values()) - 1.0) < 1e-9


def test_prepare_command_has_help(capsys):
    with pytest.raises(SystemExit):
        prepare_main(["--help"])
    assert "--num_train" in capsys.readouterr().out

"""Every shipped conf/data YAML parses: recipe configs as RecipeConfig, data sections into their DataModule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
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
    """The `data` section of each conf/data file builds its data module (a file may also set its run folder)."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(MostDataModule, "data")
    data = yaml.safe_load(path.read_text())["data"]
    if f"--config conf/quickstart.yaml --config conf/data/{path.name}" in path.read_text():  # an overlay
        base = yaml.safe_load((CONF.parent / "quickstart.yaml").read_text())["data"]
        data = base | {"init_args": base["init_args"] | data["init_args"]}
    module = parser.instantiate(parser.parse_object({"data": data})).data
    assert isinstance(module, MostDataModule)
    assert abs(sum(module.task_weights.values()) - 1.0) < 1e-9


def test_prepare_command_has_help(capsys):
    with pytest.raises(SystemExit):
        prepare_main(["--help"])
    assert "--num_train" in capsys.readouterr().out

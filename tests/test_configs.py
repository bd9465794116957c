"""Every shipped config parses; ablations differ only in the backbone's variant; bad keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from lightning_most.main import MostCLI, main
from lightning_most.stages import StageModule

ROOT = Path(__file__).resolve().parents[1]
BASES = ["conf/quickstart.yaml", "conf/stage1_most.yaml"]
ABLATIONS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "conf" / "ablation").glob("*.yaml"))
STRATEGIES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "conf" / "strategy").glob("*.yaml"))


def _print_config(capsys, *configs: str, extra: tuple[str, ...] = ()) -> dict:
    args = ["fit"] + [a for c in configs for a in ("--config", str(ROOT / c))] + list(extra) + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_cli_help_runs(capsys) -> None:
    # in this process: tests/test_main.py and tests/test_quickstart.py run the entry point as a separate one
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code in (0, None) and "--config" in capsys.readouterr().out


@pytest.mark.parametrize("base", BASES)
def test_base_configs_parse(capsys, base: str) -> None:
    cfg = _print_config(capsys, base)
    assert cfg["model"]["class_path"] == "lightning_most.stages.Stage1Module"


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablations_change_only_the_variant(capsys, ablation: str) -> None:
    base = _print_config(capsys, "conf/quickstart.yaml")
    ablated = _print_config(capsys, "conf/quickstart.yaml", ablation)
    variant = ablated["model"]["init_args"]["backbone_overrides"]["moe"]["variant"]
    assert variant in ("mamoe", "vanilla", "noshared", "dense")
    ablated["model"]["init_args"]["backbone_overrides"]["moe"]["variant"] = base["model"]["init_args"][
        "backbone_overrides"]["moe"]["variant"]
    assert ablated == base


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_configs_compose_with_stage1(capsys, strategy: str) -> None:
    _print_config(capsys, "conf/stage1_most.yaml", strategy)


def test_command_line_overrides_any_field(capsys) -> None:
    cfg = _print_config(capsys, "conf/quickstart.yaml", extra=("--model.init_args.backbone_overrides.moe.top_k", "1"))
    assert cfg["model"]["init_args"]["backbone_overrides"]["moe"]["top_k"] == 1


def test_wrong_key_or_type_fails_with_a_clear_message(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "conf/quickstart.yaml"), "--model.init_args.backbone_overrides.moe.topk", "1"])
    assert exit_info.value.code != 0
    assert "topk" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "conf/quickstart.yaml"), "--model.init_args.backbone_overrides.moe.top_k", "two"])
    assert "top_k" in capsys.readouterr().err


def test_the_model_takes_feature_width_units_and_tokenizer_from_the_data(tmp_path) -> None:
    """LightningCLI links them (`main.MostCLI`): set once, on the data module."""
    args = ["--model", "lightning_most.stages.Stage1Module", "--data", "datamodules.EmbeddedDataModule",
            "--data.init_args.corpus_dir", str(tmp_path / "corpus"), "--data.init_args.features.num_mel_bins", "80",
            "--data.init_args.features.frame_stack", "2", "--data.init_args.corpus.units.num_units", "24"]
    cli = MostCLI(model_class=StageModule, datamodule_class=pl.LightningDataModule, subclass_mode_model=True,
                  subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"}, run=False, args=args)
    assert cli.model.config.audio_feature_dim == 160  # 80 fbank bins x 2 stacked frames
    assert cli.model.config.num_audio_units == 24
    assert cli.model.hparams.tokenizer == cli.datamodule.tokenizer == "byte"
    assert cli.model.hparams.audio_feature_dim == 160  # saved with the checkpoint's hyperparameters
    with pytest.raises(ValueError, match="backbone_overrides.audio_feature_dim=320, but the data module gives"):
        StageModule(backbone_overrides={"audio_feature_dim": 320}, audio_feature_dim=160)



def test_the_whisper_units_config_changes_the_units_and_the_run_folder_only(capsys) -> None:
    base = _print_config(capsys, "conf/quickstart.yaml")
    units = _print_config(capsys, "conf/quickstart.yaml", "conf/data/whisper_units.yaml")
    assert units["data"]["init_args"]["whisper_units"]["num_units"] == 500
    assert units["data"]["init_args"]["whisper_units"]["standardize"] is True  # the measured recipe (bench/RESULTS.md)
    assert units["data"]["init_args"]["features"] == base["data"]["init_args"]["features"]  # the Whisper states
    assert units["trainer"]["default_root_dir"] == "runs/quickstart_whisper_units"
    assert units["trainer"]["logger"]["init_args"]["save_dir"] == "runs/quickstart_whisper_units"
    assert units["trainer"]["callbacks"] == base["trainer"]["callbacks"] and units["model"] == base["model"]


def test_the_learnt_units_config_asks_for_the_measured_vq_recipe(capsys) -> None:
    base = _print_config(capsys, "conf/quickstart.yaml")
    vq = _print_config(capsys, "conf/quickstart.yaml", "conf/data/whisper_vq_units.yaml")
    units = vq["data"]["init_args"]["whisper_units"]
    assert (units["quantizer"], units["num_units"], units["vocoder"]["steps"]) == ("vq", 4000, 4000)  # bench/RESULTS.md
    assert vq["trainer"]["default_root_dir"] == "runs/quickstart_whisper_vq_units"
    assert vq["trainer"]["logger"]["init_args"]["save_dir"] == "runs/quickstart_whisper_vq_units"
    assert vq["model"] == base["model"] and vq["data"]["init_args"]["features"] == base["data"]["init_args"]["features"]

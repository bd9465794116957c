"""A checkpoint whose pickle would run code is refused at every entry point, and nothing in it runs.

The hostile checkpoint is the tiny trained one with one extra hyperparameter whose `__reduce__` opens
a marker file for writing: unpickling it with `weights_only=False` would create the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from lightning_most.config import AudioEncoderOverrides, ModelOverrides
from lightning_most.decoding.word_lm import WordLMConfig
from lightning_most.inference import InferenceError, MostInference
from lightning_most.main import main
from lightning_most.safe_loading import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint
from lightning_most.stages.base import OptimizerConfig
from lightning_most.stages.stage1 import Stage1Module

if TYPE_CHECKING:
    from tests.fixtures_checkpoint import TrainedRun

pytest_plugins = ["tests.fixtures_checkpoint"]  # the shared `trained_run` fixture


class WritesMarker:
    """Unpickled, this creates the file `marker` (it calls `open(marker, "w")`, pickled as `io.open`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def hostile(trained_run: TrainedRun, tmp_path: Path) -> tuple[Path, Path]:
    """(a .ckpt that would create `marker` when unpickled unsafely, marker)."""
    return make_hostile(trained_run.checkpoint, tmp_path)


def make_hostile(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """`trained` with a hyperparameter that creates `tmp_path/marker` when unpickled: (the .ckpt, marker)."""
    checkpoint = load_checkpoint(trained)
    marker = tmp_path / "marker"
    checkpoint["hyper_parameters"]["note"] = WritesMarker(marker)
    path = tmp_path / "hostile.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=False)  # the check that the file is hostile: unsafe loading runs it ...
    assert marker.is_file()
    marker.unlink()  # ... then every test starts without the marker
    return path, marker


def exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def test_our_config_classes_load(trained_run: TrainedRun, tmp_path: Path) -> None:
    """A module built in Python (not from YAML) saves its config dataclasses in its hyperparameters."""
    hparams = {"optimizer": OptimizerConfig(lr=1e-3), "backbone_overrides": ModelOverrides(num_layers=2, audio_encoder=AudioEncoderOverrides(num_layers=1)),
               "asr_word_lm": WordLMConfig(weight=0.3)}
    checkpoint = {**load_checkpoint(trained_run.checkpoint), "hyper_parameters": hparams}
    torch.save(checkpoint, tmp_path / "dataclasses.ckpt")
    assert load_checkpoint(tmp_path / "dataclasses.ckpt")["hyper_parameters"] == hparams


def test_the_loader_refuses_code_and_names_the_file(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match=str(path)) as info:
        load_checkpoint(path)
    assert "it calls io.open" in str(info.value) and "Nothing was run" in str(info.value)
    assert not marker.exists()


def test_a_truncated_or_foreign_file_is_unreadable_not_unsafe(trained_run: TrainedRun, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained_run.checkpoint.read_bytes()[:4096])
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps([1, 2, 3]) + b"garbage")
    for path in (truncated, foreign):
        with pytest.raises(UnreadableCheckpointError, match=str(path)):
            load_checkpoint(path)


@pytest.mark.parametrize("command", ["transcribe", "synthesize", "evaluate", "chat"])
def test_commands_refuse_it_with_one_line(
    command: str, hostile: tuple[Path, Path], trained_run: TrainedRun, tmp_path: Path, capsys
) -> None:
    path, marker = hostile
    args = {
        "transcribe": [str(trained_run.test_wavs[0])],
        "synthesize": ["--text", "hello", "--out", str(tmp_path / "out.wav")],
        "evaluate": ["--suites", "asr", "--corpus_dir", str(trained_run.corpus_dir), "--out_dir", str(tmp_path / "e")],
        "chat": ["what is the weather"],
    }[command]
    assert exit_code([command, "--ckpt", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: refusing to load {path}") and len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_upcycle_refuses_it(hostile: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    path, marker = hostile
    assert exit_code(["upcycle", "--src", str(path), "--out", str(tmp_path / "moe.pt")]) == 2
    assert f"refusing to load {path}" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "moe.pt").exists()


def test_inference_and_init_from_refuse_it(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.raises(InferenceError, match="refusing to load"):
        MostInference.from_checkpoint(path)
    module = Stage1Module(init_from=str(path))
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        module.configure_model()
    assert not marker.exists()


def test_init_from_a_lightning_checkpoint_still_loads_its_backbone(trained_run: TrainedRun) -> None:
    state = load_checkpoint(trained_run.checkpoint)
    hparams = state["hyper_parameters"]
    arguments = {k: v for k, v in hparams.items() if not k.startswith("_")}  # the same backbone ...
    module = Stage1Module(**{**arguments, "init_from": str(trained_run.checkpoint)})  # ... started from the checkpoint
    module.configure_model()
    name, weight = next(iter(module.backbone.state_dict().items()))
    torch.testing.assert_close(weight, state["state_dict"][f"backbone.{name}"], rtol=0, atol=0)


def test_lightning_resume_refuses_it(hostile: tuple[Path, Path], trained_run: TrainedRun, tmp_path: Path) -> None:
    """`fit --ckpt_path` goes through Lightning's loader, which the shipped configs run with weights_only=True."""
    path, marker = hostile
    with pytest.raises(pickle.UnpicklingError, match="GLOBAL io.open"):
        main([
            "fit", "--config", "conf/quickstart.yaml", "--ckpt_path", str(path),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--data.init_args.corpus_dir", str(trained_run.corpus_dir),
            "--data.init_args.corpus.num_train", "24", "--data.init_args.corpus.num_dev", "6",
            "--data.init_args.corpus.num_test", "6", "--data.init_args.corpus.num_text_train", "50",
            "--data.init_args.corpus.num_text_dev", "10", "--data.init_args.corpus.voices", "[flite_rms, flite_slt]",
            "--data.init_args.corpus.variants", "[[1.0, 0], [1.1, 150]]",
            "--data.init_args.corpus.num_test_speakers", "1", "--data.init_args.corpus.units.num_units", "16",
            "--data.init_args.corpus.units.max_frames", "4000", "--data.init_args.corpus.units.iterations", "5",
        ])  # fmt: skip
    assert not marker.exists()

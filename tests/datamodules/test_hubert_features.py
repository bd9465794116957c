"""features.kind 'hubert': HuBERT layer states on the fly or stored once per corpus, read back by the dataset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from lhotse import CutSet

from datamodules import encoder_features
from datamodules.dataset import MostDataset
from datamodules.encoder_features import main as encoder_features_main
from datamodules.encoder_features import prepare_encoder_features, store_encoder_features
from lightning_most.audio import HubertEncoder, HubertEncoderConfig
from lightning_most.audio.features import FeatureConfig, InputFeatures, stack_frames

pytest_plugins = ["tests.fixtures_hubert"]
HIDDEN_SIZE = 32  # width of the tiny HuBERT of tests.fixtures_hubert


def _hubert(path, layer: int = 2, frame_stack: int = 2) -> FeatureConfig:
    return FeatureConfig(kind="hubert", hubert_path=str(path), hubert_layer=layer, frame_stack=frame_stack)


def _asr(cut):
    return dataclasses.replace(cut, custom={**(cut.custom or {}), "task": "asr"})


def _dev_cuts(corpus) -> CutSet:
    return CutSet.from_file(corpus.cuts["dev"]).to_eager()


def test_on_the_fly_frames_are_the_chosen_layer_stacked(tiny_corpus, tiny_hubert):
    features = _hubert(tiny_hubert, layer=2)
    dataset = MostDataset(features=features)
    assert dataset.extractor.num_features == HIDDEN_SIZE and dataset.extractor._hubert is None  # width from config.json
    cut = _dev_cuts(tiny_corpus)[0]
    frames = dataset._input_features(_asr(cut))
    layer2 = HubertEncoder(HubertEncoderConfig(path=str(tiny_hubert), layer=2))(torch.from_numpy(MostDataset._load_audio(cut)))
    assert layer2.shape[0] == dataset.extractor.encoder_frames(cut.num_samples)
    torch.testing.assert_close(frames, stack_frames(layer2, 2))
    layer1 = MostDataset(features=_hubert(tiny_hubert, layer=1))._input_features(_asr(cut))
    assert frames.shape == layer1.shape == (layer2.shape[0] // 2, 2 * HIDDEN_SIZE)
    assert not torch.allclose(frames, layer1)


def test_stored_states_are_read_back_as_the_dataset_would_compute_them(tiny_corpus, tiny_hubert, tmp_path):
    features = _hubert(tiny_hubert, layer=2)
    stored, skipped = store_encoder_features(_dev_cuts(tiny_corpus), tmp_path / "states", features)
    assert not skipped
    dataset = MostDataset(features=features)
    on_the_fly = InputFeatures(features)
    for cut in stored:
        assert cut.features.type == "hubert_encoder_layer2" and cut.features.num_features == HIDDEN_SIZE
        assert cut.features.frame_shift == pytest.approx(0.02)
        frames = dataset._input_features(_asr(cut))  # read from the .npy files
        expected = stack_frames(on_the_fly(MostDataset._load_audio(cut)), 2)
        torch.testing.assert_close(frames, expected, atol=2e-2, rtol=2e-3)  # float16 storage


def test_prepared_states_are_reused_for_the_same_layer_and_redone_for_another(
    tiny_corpus, tiny_hubert, tmp_path, monkeypatch
):
    source, out = tiny_corpus.cuts["dev"], tmp_path / "hubert" / "dev.jsonl.gz"
    encoder_features_main([
        "--cuts", str(source), "--out", str(out), "--features.kind", "hubert",
        "--features.hubert_path", str(tiny_hubert), "--features.hubert_layer", "1",
    ])  # fmt: skip
    stamp = json.loads(out.with_name("dev.json").read_text())["stamp"]
    assert stamp["hubert_layer"] == 1 and all(c.features.type == "hubert_encoder_layer1" for c in CutSet.from_file(out))
    assert (tmp_path / "hubert" / "features" / "dev").is_dir()
    calls = []
    original = encoder_features.store_encoder_features
    monkeypatch.setattr(
        encoder_features, "store_encoder_features", lambda *a, **k: calls.append(a[2].hubert_layer) or original(*a, **k)
    )
    prepare_encoder_features(source, out, tmp_path / "hubert" / "features" / "dev", _hubert(tiny_hubert, layer=1))
    assert calls == []  # up to date: nothing encoded
    prepare_encoder_features(source, out, tmp_path / "hubert" / "features" / "dev", _hubert(tiny_hubert, layer=2))
    assert calls == [2]  # another layer: encoded again


def test_states_stored_from_another_layer_are_not_read(tiny_corpus, tiny_hubert, tmp_path):
    cut = _dev_cuts(tiny_corpus)[0]
    stored, _ = store_encoder_features(CutSet.from_cuts([cut]), tmp_path / "states", _hubert(tiny_hubert, layer=2))
    assert not cut.has_features  # the input cut is left as it was
    layer1 = MostDataset(features=_hubert(tiny_hubert, layer=1))
    torch.testing.assert_close(layer1._input_features(_asr(stored[0])), layer1._input_features(_asr(cut)))  # computed
    layer2 = MostDataset(features=_hubert(tiny_hubert, layer=2))
    torch.testing.assert_close(
        layer2._input_features(_asr(stored[0])), layer2._input_features(_asr(cut)), atol=2e-2, rtol=2e-3
    )  # read


def test_bad_hubert_settings_fail_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="hubert_path"):
        FeatureConfig(kind="hubert")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        InputFeatures(FeatureConfig(kind="hubert", hubert_path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="FeatureConfig.kind in"):
        store_encoder_features(CutSet.from_cuts([]), tmp_path, FeatureConfig(kind="fbank"))


def test_the_dataset_pickles_without_the_loaded_model(tiny_corpus, tiny_hubert):
    import pickle

    extractor = InputFeatures(_hubert(tiny_hubert))
    audio = MostDataset._load_audio(_dev_cuts(tiny_corpus)[0])
    expected = extractor(audio)
    copy = pickle.loads(pickle.dumps(extractor))  # a spawned DataLoader worker's copy loads its own model
    assert copy._hubert is None
    torch.testing.assert_close(copy(audio), expected)

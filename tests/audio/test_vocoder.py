import json

import pytest
import soundfile
import torch

from lightning_most.audio import (
    FbankEncoder,
    FbankEncoderConfig,
    GriffinLimVocoder,
    GriffinLimVocoderConfig,
    UnitHifiganConfig,
    UnitHifiganVocoder,
    UnitHifiganVocoderConfig,
    build_vocoder,
    save_unit_hifigan,
    train_kmeans,
)

# A generator small enough to build and run in well under a second; 5*4*4*2*2 = 320 samples per unit.
TINY_HIFIGAN = UnitHifiganConfig(
    vocab_size=16,
    embedding_dim=16,
    upsample_initial_channel=32,
    resblock_kernel_sizes=(3,),
    resblock_dilation_sizes=((1, 3, 5),),
)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def utterances(speech_files):
    return [torch.from_numpy(soundfile.read(p, dtype="float32")[0]) for p in speech_files]


def test_griffin_lim_round_trip_resembles_the_original(utterances):
    """encode -> quantize -> vocode -> encode again; the log-mels of original and reconstruction correlate.

    Measured here (espeak-ng sentences, K=64 fit on both): 0.967 against the original's log-mel,
    against 0.40 between the two different sentences. 0.9 leaves room for other voices and BLAS.
    """
    encoder = FbankEncoder()
    frames = [encoder(w) for w in utterances]
    quantizer = train_kmeans(frames, num_units=64, seed=0)
    vocoder = GriffinLimVocoder(quantizer)
    units = quantizer.quantize(frames[0])  # (T,)
    audio = vocoder(units)
    assert vocoder.sample_rate == 16000
    assert audio.shape == (units.numel() * 320,)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0.01
    assert torch.equal(audio, vocoder(units))  # deterministic
    assert vocoder(units[:1]).shape == (320,) and vocoder(units[:0]).shape == (0,)
    rebuilt = encoder(audio)  # (T, 160)
    n = min(rebuilt.shape[0], frames[0].shape[0])
    same = _correlation(rebuilt[:n], frames[0][:n])
    m = min(n, frames[1].shape[0])
    other = _correlation(rebuilt[:m], frames[1][:m])
    assert same > 0.9 and same > other + 0.3, (same, other)


def test_log_mel_inversion_ignores_and_keeps_the_global_rng():
    """Griffin-Lim starts from a fixed phase (`rand_init=False`): the same log-mel gives the same waveform whatever the
    global seed, and the global RNG stream is not consumed (a resynthesis WER that moves between runs is the judge's)."""
    from lightning_most.audio.vocoder import LogMelInverse

    config = FbankEncoderConfig()
    log_mel = torch.randn(12, config.num_mel_bins * config.stack, generator=torch.Generator().manual_seed(0)) - 4
    inverse = LogMelInverse(config, n_iter=4)
    torch.manual_seed(1)
    untouched = torch.rand(4)  # the stream's first draws
    torch.manual_seed(1)
    first = inverse(log_mel)
    assert torch.equal(torch.rand(4), untouched)
    torch.manual_seed(2)
    second = inverse(log_mel)
    assert torch.equal(first, second) and first.shape == (12 * config.stack * config.hop_length,)


def test_griffin_lim_refuses_units_of_another_feature_space():
    quantizer = train_kmeans(torch.randn(64, 80), num_units=8)
    with pytest.raises(ValueError, match="dimension 80, but .* 80 mels x stack 2 = 160"):
        GriffinLimVocoder(quantizer)
    config = GriffinLimVocoderConfig(fbank=FbankEncoderConfig(stack=1), n_iter=4)
    assert GriffinLimVocoder(quantizer, config)(torch.tensor([1, 2, 3])).shape == (3 * 160,)


def test_build_vocoder_by_name(tmp_path):
    quantizer = train_kmeans(torch.randn(64, 160), num_units=8)
    quantizer.save(tmp_path / "units.safetensors")
    vocoder = build_vocoder("griffin_lim", quantizer=str(tmp_path / "units.safetensors"), n_iter=2)
    assert vocoder(torch.tensor([0, 7])).shape == (640,)
    with pytest.raises(ValueError, match="needs `quantizer`"):
        build_vocoder("griffin_lim")
    with pytest.raises(ValueError, match="unknown vocoder 'wavenet'"):
        build_vocoder("wavenet")
    save_unit_hifigan(TINY_HIFIGAN.build(), TINY_HIFIGAN, tmp_path / "hifigan")
    assert build_vocoder("hifigan", path=str(tmp_path / "hifigan"))(torch.tensor([3, 3, 4])).shape == (960,)


def test_hifigan_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    generator = TINY_HIFIGAN.build()
    save_unit_hifigan(generator, TINY_HIFIGAN, tmp_path)
    vocoder = UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(tmp_path)))
    assert vocoder.generator_config == TINY_HIFIGAN
    units = torch.tensor([0, 5, 5, 15, 2])
    audio = vocoder(units)
    assert audio.shape == (5 * 320,) and torch.isfinite(audio).all()
    generator.remove_weight_norm()
    expected = generator.eval().inference(units[None, :, None])[0, 0]
    torch.testing.assert_close(audio, expected)
    with pytest.raises(ValueError, match=r"unit ids must lie in \[0, 16\)"):
        vocoder(torch.tensor([16]))
    assert vocoder(torch.tensor([7])).shape == (320,)  # shorter than the first convolution
    assert vocoder(torch.tensor([], dtype=torch.long)).shape == (0,)


def test_bad_hifigan_checkpoints_name_the_file(tmp_path):
    folder = tmp_path / "vocoder"
    with pytest.raises(FileNotFoundError, match=r"vocoder.config\.json is missing"):
        UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(folder)))
    save_unit_hifigan(TINY_HIFIGAN.build(), TINY_HIFIGAN, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 500}))
    with pytest.raises(
        ValueError, match=r"(?s)generator\.ckpt does not match .*config\.json.*size mismatch for unit_embedding"
    ):
        UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(folder)))
    (folder / "config.json").write_text(json.dumps({**config, "channels": 3}))
    with pytest.raises(ValueError, match=r"config\.json is not a UnitHifiganConfig JSON.*channels"):
        UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(folder)))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generator.ckpt").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(ValueError, match=r"generator\.ckpt is not a readable state dict"):
        UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(folder)))
    (folder / "generator.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match=r"generator\.ckpt is missing"):
        UnitHifiganVocoder(UnitHifiganVocoderConfig(path=str(folder)))

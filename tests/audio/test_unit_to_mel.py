"""The unit-to-mel vocoder: shapes, training lowers the loss, save/load, Griffin-Lim output, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_most.audio import FbankEncoderConfig, build_vocoder
from lightning_most.audio.train_unit_to_mel import UnitToMelExample, UnitToMelTrainingConfig, train_unit_to_mel
from lightning_most.audio.unit_to_mel import (
    UNIT_TO_MEL_CONFIG,
    UNIT_TO_MEL_WEIGHTS,
    UnitToMel,
    UnitToMelConfig,
    UnitToMelVocoder,
    UnitToMelVocoderConfig,
    load_unit_to_mel,
    save_unit_to_mel,
)

K, SPEAKERS = 8, ("a", "b")
TINY = UnitToMelConfig(num_units=K, speakers=SPEAKERS, speaker="b", width=16, num_layers=2, kernel_size=3)


def _examples(n: int = 12, T: int = 40) -> list[UnitToMelExample]:
    """Log-mel = a fixed spectrum per unit, shifted by a per-speaker level: learnable from units + speaker."""
    generator = torch.Generator().manual_seed(0)
    spectra = torch.randn(K, TINY.frame_dim, generator=generator) - 4.0  # (K, 160)
    examples = []
    for i in range(n):
        units = torch.randint(K, (T,), generator=generator)
        speaker = SPEAKERS[i % 2]
        examples.append(UnitToMelExample(units, spectra[units] + (1.0 if speaker == "b" else -1.0), speaker))
    return examples


def test_shapes_and_context():
    model = UnitToMel(TINY).eval()
    units = torch.randint(K, (3, 20))
    out = model(units, torch.tensor([0, 1, 0]))
    assert out.shape == (3, 20, 160)
    changed = units.clone()
    changed[0, 10] = (changed[0, 10] + 1) % K
    moved = (model(changed, torch.tensor([0, 1, 0])) - out).abs().sum(-1)[0]  # (20,)
    # 2 layers of kernel 3: a unit reaches 2 frames on each side, no further
    assert moved[8:13].gt(0).all() and moved[:8].eq(0).all() and moved[13:].eq(0).all()
    assert TINY.receptive_field == 5


def test_dilated_convolutions_widen_the_context_to_the_receptive_field():
    config = UnitToMelConfig(num_units=K, speakers=SPEAKERS, width=16, num_layers=3, kernel_size=3, dilation_cycle=2)
    assert config.dilations == (1, 2, 1) and config.receptive_field == 9
    model = UnitToMel(config).eval()
    units = torch.randint(K, (1, 30))
    changed = units.clone()
    changed[0, 15] = (changed[0, 15] + 1) % K
    moved = (model(changed, torch.tensor([0])) - model(units, torch.tensor([0]))).abs().sum(-1)[0]  # (30,)
    reached = moved.gt(0).nonzero().flatten()
    assert reached.min() == 11 and reached.max() == 19  # 4 frames each side: 1 + 2 + 1


def test_training_lowers_the_l1_and_learns_the_speakers():
    examples = _examples()
    model, losses = train_unit_to_mel(examples, TINY, UnitToMelTrainingConfig(steps=150, batch_size=4, crop_units=16, log_every=50))
    assert len(losses) == 150 and not model.training
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, (losses[:3], losses[-3:])
    units = examples[0].units[None]
    gap = model(units, torch.tensor([1])) - model(units, torch.tensor([0]))  # the speaker offset is +1 vs -1
    assert float(gap.mean()) > 0.4  # learnt the louder speaker (the true gap, 2.0, takes longer than this test)


def test_training_refuses_examples_it_cannot_learn():
    with pytest.raises(ValueError, match="does not list"):
        train_unit_to_mel([UnitToMelExample(torch.zeros(4, dtype=torch.long), torch.zeros(4, 160), "c")], TINY,
                          UnitToMelTrainingConfig(steps=1))
    with pytest.raises(ValueError, match="out of range"):
        train_unit_to_mel([UnitToMelExample(torch.full((4,), K), torch.zeros(4, 160), "a")], TINY,
                          UnitToMelTrainingConfig(steps=1))
    with pytest.raises(ValueError, match="no examples"):
        train_unit_to_mel([], TINY, UnitToMelTrainingConfig(steps=1))


def test_save_load_and_vocode(tmp_path):
    model = UnitToMel(TINY).eval()
    save_unit_to_mel(model, tmp_path)
    assert json.loads((tmp_path / UNIT_TO_MEL_CONFIG).read_text())["speakers"] == list(SPEAKERS)
    loaded = load_unit_to_mel(tmp_path)
    units = torch.randint(K, (1, 9))
    torch.testing.assert_close(loaded(units, torch.tensor([1])), model(units, torch.tensor([1])))
    vocoder = build_vocoder("unit_to_mel", path=str(tmp_path), n_iter=4)
    assert isinstance(vocoder, UnitToMelVocoder) and vocoder.speaker_id == 1  # the config's voice, "b"
    audio = vocoder(units[0])
    assert audio.shape == (9 * 320,) and torch.isfinite(audio).all()
    assert torch.equal(audio, vocoder(units[0]))  # deterministic
    assert vocoder(units[0, :0]).shape == (0,)
    assert UnitToMelVocoder(UnitToMelVocoderConfig(str(tmp_path), speaker="a", n_iter=4)).speaker_id == 0


def test_bad_folders_and_units_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=UNIT_TO_MEL_CONFIG):
        load_unit_to_mel(tmp_path)
    save_unit_to_mel(UnitToMel(TINY), tmp_path)
    vocoder = UnitToMelVocoder(UnitToMelVocoderConfig(str(tmp_path), n_iter=2))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vocoder(torch.tensor([0, K]))
    with pytest.raises(ValueError, match="unknown speaker"):
        UnitToMelVocoder(UnitToMelVocoderConfig(str(tmp_path), speaker="z"))
    other = UnitToMel(UnitToMelConfig(num_units=K + 1, speakers=SPEAKERS, width=16, num_layers=2, kernel_size=3))
    save_unit_to_mel(other, tmp_path / "other")
    (tmp_path / UNIT_TO_MEL_WEIGHTS).write_bytes((tmp_path / "other" / UNIT_TO_MEL_WEIGHTS).read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        load_unit_to_mel(tmp_path)
    with pytest.raises(ValueError, match="odd"):
        UnitToMelConfig(num_units=K, kernel_size=4)
    with pytest.raises(ValueError, match="not one of the speakers"):
        UnitToMelConfig(num_units=K, speakers=("a",), speaker="b")


def test_the_log_mel_of_a_unit_to_mel_is_what_griffin_lim_inverts():
    """A model whose output is a real utterance's log-mel speaks it back: the inversion is the corpus's FbankEncoder's."""
    from lightning_most.audio import FbankEncoder
    from lightning_most.audio.vocoder import LogMelInverse

    generator = torch.Generator().manual_seed(1)
    t = torch.arange(16000) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.01 * torch.randn(16000, generator=generator)
    encoder = FbankEncoder(FbankEncoderConfig())
    log_mel = encoder(wave)  # (50, 160)
    rebuilt = encoder(LogMelInverse(FbankEncoderConfig(), n_iter=16)(log_mel))
    n = min(rebuilt.shape[0], log_mel.shape[0])
    assert (rebuilt[:n] - log_mel[:n]).abs().mean() < 1.0

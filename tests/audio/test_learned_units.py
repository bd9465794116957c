"""Learned VQ units: shapes, the codebook stays in use, training lowers the loss, the exported vocoder speaks them,
save/load, and either kind of quantizer file loads."""

from __future__ import annotations

import pytest
import torch

from lightning_most.audio import UnitQuantizer, load_unit_quantizer, train_kmeans
from lightning_most.audio.learned_units import VQExample, VQUnitQuantizer, VQUnitsConfig, train_vq_units
from lightning_most.audio.train_unit_to_mel import UnitToMelTrainingConfig
from lightning_most.audio.unit_to_mel import UnitToMelConfig

K, F_STATES, SPEAKERS = 16, 12, ("a", "b")
VQ = VQUnitsConfig(code_dim=8, hidden=16, kernel_size=3)
DECODER = UnitToMelConfig(num_units=K, speakers=SPEAKERS, speaker="a", width=16, num_layers=2, kernel_size=3)
TRAINING = UnitToMelTrainingConfig(steps=150, batch_size=8, crop_units=24, learning_rate=5e-3, log_every=50)


def _examples(n: int = 16, T: int = 40) -> list[VQExample]:
    """States = one of 6 'phones' (a random vector + noise); the log-mel = that phone's spectrum + a speaker level."""
    generator = torch.Generator().manual_seed(0)
    phone_states = 3 * torch.randn(6, F_STATES, generator=generator)
    phone_spectra = torch.randn(6, DECODER.frame_dim, generator=generator) - 4.0
    examples = []
    for i in range(n):
        phones = torch.randint(6, (T // 4,), generator=generator).repeat_interleave(4)  # (T,), runs of 4 frames
        states = phone_states[phones] + 0.1 * torch.randn(T, F_STATES, generator=generator)
        speaker = SPEAKERS[i % 2]
        examples.append(VQExample(states, phone_spectra[phones] + (1.0 if speaker == "b" else -1.0), speaker))
    return examples


def _quantizer() -> VQUnitQuantizer:
    torch.manual_seed(0)
    return VQUnitQuantizer(VQ, K, torch.zeros(F_STATES), torch.ones(F_STATES)).eval()


def test_quantize_gives_one_unit_per_state_in_range():
    quantizer = _quantizer()
    units = quantizer.quantize(torch.randn(30, F_STATES))
    assert units.shape == (30,) and units.dtype == torch.long
    assert 0 <= int(units.min()) and int(units.max()) < K
    assert quantizer.quantize(torch.zeros(0, F_STATES)).shape == (0,)
    with pytest.raises(ValueError, match=r"expected states \(T, 12\)"):
        quantizer.quantize(torch.randn(30, 7))


def test_dead_codewords_restart_on_the_batch_codes():
    quantizer = _quantizer()
    codes = torch.nn.functional.normalize(torch.randn(64, VQ.code_dim), dim=-1)
    units = torch.zeros(64, dtype=torch.long)  # every code chose codeword 0
    quantizer.update_codebook(codes, units, torch.Generator().manual_seed(0))
    # the other K - 1 codewords had no count: each now sits on one of the batch's codes
    similarity = quantizer.codebook[1:] @ codes.T  # (K - 1, 64)
    assert torch.allclose(similarity.max(dim=1).values, torch.ones(K - 1), atol=1e-5)
    assert torch.allclose(quantizer.codebook.norm(dim=1), torch.ones(K), atol=1e-5)


def test_training_lowers_the_loss_and_the_exported_vocoder_speaks_the_units():
    examples = _examples()
    quantizer, decoder, losses = train_vq_units(examples, VQ, DECODER, TRAINING)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert not any(p.requires_grad for p in [*quantizer.parameters(), *decoder.parameters()])
    errors, used = [], set()
    for e in examples[:4]:
        units = quantizer.quantize(e.states)
        used |= set(units.tolist())
        speaker = torch.tensor([SPEAKERS.index(e.speaker)])
        errors.append(float((decoder(units[None], speaker)[0] - e.log_mel).abs().mean()))
    # the plain UnitToMel (unit embedding = the codewords through the trained input projection) reproduces the
    # training path: its L1 on training utterances is as low as the loss at the end of training
    assert sum(errors) / len(errors) < 1.5 * sum(losses[-10:]) / 10
    assert len(used) >= 6  # at least one codeword per phone: the codebook did not collapse


def test_save_and_load_give_the_same_units(tmp_path):
    quantizer = _quantizer()
    path = tmp_path / "unit_quantizer.safetensors"
    quantizer.save(path)
    loaded = VQUnitQuantizer.load(path, num_units=K)
    states = torch.randn(25, F_STATES)
    assert torch.equal(loaded.quantize(states), quantizer.quantize(states))
    assert loaded.config == VQ and not loaded.training
    with pytest.raises(ValueError, match="has 16 units but 10 were expected"):
        VQUnitQuantizer.load(path, num_units=10)


def test_load_unit_quantizer_reads_either_kind(tmp_path):
    vq_path, kmeans_path = tmp_path / "vq.safetensors", tmp_path / "kmeans.safetensors"
    _quantizer().save(vq_path)
    train_kmeans([torch.randn(200, F_STATES)], num_units=4, seed=0, iterations=2).save(kmeans_path)
    assert isinstance(load_unit_quantizer(vq_path, num_units=K), VQUnitQuantizer)
    assert isinstance(load_unit_quantizer(kmeans_path, num_units=4), UnitQuantizer)
    with pytest.raises(ValueError, match="not a VQ unit quantizer"):
        VQUnitQuantizer.load(kmeans_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        load_unit_quantizer(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_unit_quantizer(tmp_path / "missing.safetensors")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        VQUnitsConfig(kernel_size=2)
    with pytest.raises(ValueError, match="ema_decay"):
        VQUnitsConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="which UnitToMelConfig.speakers does not list"):
        train_vq_units([VQExample(torch.randn(8, F_STATES), torch.randn(8, 160), "c")], VQ, DECODER, TRAINING)

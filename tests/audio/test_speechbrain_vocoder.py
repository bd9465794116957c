"""A speechbrain unit HiFi-GAN folder in its published layout (HyperPyYAML + state dict), read without running it."""

from __future__ import annotations

import pytest
import torch

from lightning_most.audio import build_vocoder

HPARAMS = """\
vocab_size: {vocab_size}
embedding_dim: 16
in_channels: 16
out_channels: 1
resblock_type: "1"
resblock_dilation_sizes: [[1, 3, 5]]
resblock_kernel_sizes: [3]
upsample_kernel_sizes: [11, 8, 8, 4, 4]
upsample_initial_channel: 32
upsample_factors: [5, 4, 4, 2, 2]
inference_padding: 5
cond_channels: 0
conv_post_bias: True

generator: {generator_tag}
  in_channels: !ref <in_channels>
  out_channels: !ref <out_channels>
  resblock_type: !ref <resblock_type>
  resblock_dilation_sizes: !ref <resblock_dilation_sizes>
  resblock_kernel_sizes: !ref <resblock_kernel_sizes>
  upsample_kernel_sizes: !ref <upsample_kernel_sizes>
  upsample_initial_channel: !ref <upsample_initial_channel>
  upsample_factors: !ref <upsample_factors>
  inference_padding: !ref <inference_padding>
  cond_channels: !ref <cond_channels>
  conv_post_bias: !ref <conv_post_bias>
  vocab_size: !ref <vocab_size>
  embedding_dim: !ref <embedding_dim>
  duration_predictor: False
  multi_speaker: {multi_speaker}

modules:
  generator: !ref <generator>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
    generator: !ref <generator>
"""
TAG = "!new:speechbrain.lobes.models.HifiGAN.UnitHifiganGenerator"


@pytest.fixture
def speechbrain_folder(tmp_path):
    """A random 9-unit (8 + speechbrain's reserved id 0) generator in speechbrain's published layout."""
    from speechbrain.lobes.models.HifiGAN import UnitHifiganGenerator

    folder = tmp_path / "hifigan-unit"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text(HPARAMS.format(vocab_size=9, generator_tag=TAG, multi_speaker="False"))
    generator = UnitHifiganGenerator(
        in_channels=16, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]],
        resblock_kernel_sizes=[3], upsample_kernel_sizes=[11, 8, 8, 4, 4], upsample_initial_channel=32,
        upsample_factors=[5, 4, 4, 2, 2], vocab_size=9, embedding_dim=16,
    )  # fmt: skip
    torch.save(generator.state_dict(), folder / "generator.ckpt")
    generator.remove_weight_norm()
    return folder, generator.eval()


def test_units_are_spoken_by_the_published_generator_with_ids_shifted_by_one(speechbrain_folder):
    folder, generator = speechbrain_folder
    vocoder = build_vocoder("speechbrain_hifigan", path=str(folder))
    units = torch.tensor([0, 3, 3, 7, 1, 2])
    audio = vocoder(units)
    with torch.no_grad():
        expected = generator.inference((units + 1)[None, :, None])[0, 0]  # speechbrain's UnitHIFIGAN adds 1
    assert audio.shape == (6 * 320,)
    torch.testing.assert_close(audio, expected)
    assert vocoder(torch.tensor([5])).shape == (320,)  # shorter than the first convolution: padded, then cut
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vocoder(torch.tensor([8]))


def test_files_that_would_run_code_or_do_not_fit_are_refused(speechbrain_folder):
    folder, _ = speechbrain_folder
    hparams = folder / "hyperparams.yaml"
    hparams.write_text(HPARAMS.format(vocab_size=9, generator_tag="!new:os.system", multi_speaker="False"))
    with pytest.raises(ValueError, match="UnitHifiganGenerator"):
        build_vocoder("speechbrain_hifigan", path=str(folder))
    hparams.write_text(HPARAMS.format(vocab_size=9, generator_tag=TAG, multi_speaker="!apply:os.getcwd []"))
    with pytest.raises(ValueError, match="only plain values"):
        build_vocoder("speechbrain_hifigan", path=str(folder))
    hparams.write_text(HPARAMS.format(vocab_size=9, generator_tag=TAG, multi_speaker="True"))
    with pytest.raises(ValueError, match="multi-speaker"):
        build_vocoder("speechbrain_hifigan", path=str(folder))
    hparams.write_text(HPARAMS.format(vocab_size=12, generator_tag=TAG, multi_speaker="False"))
    with pytest.raises(ValueError, match="does not match"):
        build_vocoder("speechbrain_hifigan", path=str(folder))
    (folder / "generator.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="generator.ckpt"):
        build_vocoder("speechbrain_hifigan", path=str(folder))

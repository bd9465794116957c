"""Reading and writing waveforms as the framework passes them: mono float32 tensors ``(S,)`` at 16 kHz.

Used by the evaluation suites and the checkpoint commands (`transcribe` reads wav files, `synthesize`
writes them). (A checkpoint's `audio_io` is something else: how its training data turned audio into
features and units, read by `inference.AudioIO`.)
"""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
import torchaudio.functional
from lhotse.cut import Cut
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE


def to_mono_16k(samples: Tensor, sampling_rate: int) -> Tensor:
    """Mix ``(C, S)`` or ``(S,)`` samples to mono float32 ``(S,)`` and resample to 16 kHz."""
    waveform = samples.to(torch.float32)
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=0)
    if waveform.dim() != 1:
        raise ValueError(f"expected audio of shape (S,) or (C, S), got {tuple(samples.shape)}")
    if sampling_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, sampling_rate, SAMPLE_RATE)
    return waveform


def read_wav(path: str | Path) -> Tensor:
    """Read an audio file (any format soundfile reads) as mono 16 kHz float32 ``(S,)``."""
    samples, sampling_rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return to_mono_16k(torch.from_numpy(samples.T.copy()), sampling_rate)


def load_cut_waveform(cut: Cut) -> Tensor:
    """Load a Lhotse cut's audio as mono 16 kHz float32 ``(S,)``."""
    samples = cut.load_audio()  # (C, S) numpy at cut.sampling_rate
    return to_mono_16k(torch.from_numpy(samples), cut.sampling_rate)


def write_wav(path: str | Path, waveform: Tensor) -> None:
    """Write a mono 16 kHz waveform ``(S,)`` as 16-bit PCM WAV."""
    soundfile.write(str(path), waveform.detach().cpu().clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")

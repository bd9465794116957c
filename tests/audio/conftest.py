"""Real speech for the audio tests, spoken by espeak-ng as 16 kHz mono 16-bit wav (`offline_voices`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile
import torch

from lightning_most.audio.offline_voices import Voice, check_installed, speak

SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
)


ESPEAK = Voice("espeak-ng", "en")  # espeak-ng's default voice


def _speak(text: str, out: Path) -> Path:
    try:
        check_installed(ESPEAK)
    except FileNotFoundError as missing:
        pytest.skip(f"{missing} No test speech can be made.")
    speak(ESPEAK, [(text, out)], peak_db=None)
    return out


@pytest.fixture(scope="session")
def speech_files(tmp_path_factory) -> list[Path]:
    """Two spoken sentences as 16 kHz wav files."""
    folder = tmp_path_factory.mktemp("speech")
    return [_speak(text, folder / f"utt{i}.wav") for i, text in enumerate(SENTENCES)]


@pytest.fixture(scope="session")
def waveform(speech_files) -> torch.Tensor:
    """The first sentence as a float waveform (S,) at 16 kHz."""
    data, rate = soundfile.read(speech_files[0], dtype="float32")
    assert rate == 16000
    return torch.from_numpy(data)

"""Real speech for the audio tests, spoken by espeak-ng and converted to 16 kHz mono 16-bit with sox."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile
import torch

SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
)


def _speak(text: str, out: Path) -> Path:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox): no test speech can be made")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
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

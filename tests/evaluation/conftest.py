"""Fixtures for the evaluation tests: speech made offline with flite/espeak-ng, a shared judge."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from torch import Tensor

from lightning_most.audio.offline_voices import Voice, speak
from lightning_most.audio.waveforms import read_wav

if shutil.which("espeak-ng") is None or shutil.which("flite") is None or shutil.which("sox") is None:
    pytest.skip("needs espeak-ng, flite and sox (apt-get install -y espeak-ng flite sox)", allow_module_level=True)


def waveform_key(waveform: Tensor) -> str:
    """Content hash identifying a waveform, so fakes can recognise the audio they are given."""
    return hashlib.sha1(waveform.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="session")
def whisper_judge():
    """The default offline judge, loaded once per session."""
    from lightning_most.evaluation.judges import WhisperTinyJudge

    return WhisperTinyJudge()


@pytest.fixture(scope="session")
def flite_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tensor]:
    """One short flite (rms) utterance and its text."""
    text = "glue the sheet to the dark blue background"
    path = tmp_path_factory.mktemp("flite") / "clip.wav"
    speak(Voice("flite", "rms"), [(text, path)], peak_db=None)
    return text, read_wav(path)


def write_flite(text: str, path: Path, voice: str = "rms") -> Path:
    """Speak ``text`` with a flite voice into ``path``."""
    speak(Voice("flite", voice), [(text, path)], peak_db=None)
    return path

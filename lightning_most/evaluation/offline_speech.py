"""Speaking text with the Debian voices installed on every machine (espeak-ng, flite), via sox.

Used to build the miniature evaluation sets offline. Output files are 16 kHz mono 16-bit WAV.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lightning_most.evaluation.protocols import SAMPLING_RATE

ENGINES = ("espeak-ng", "flite")


@dataclass
class OfflineVoice:
    """A command-line voice: engine name and voice name (``espeak-ng -v`` or ``flite -voice``)."""

    engine: str = "espeak-ng"
    """``espeak-ng`` or ``flite``."""
    voice: str = "en-us"
    """Voice for the engine, e.g. ``en-us``/``en-gb`` (espeak-ng) or ``rms``/``slt``/``awb`` (flite)."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"OfflineVoice.engine must be one of {ENGINES}, got {self.engine!r}")

    @property
    def name(self) -> str:
        """Short label used in gold files, e.g. ``espeak-ng_en-us``."""
        return f"{self.engine}_{self.voice}"


def _run(command: list[str]) -> str:
    tool = command[0]
    if shutil.which(tool) is None:
        raise FileNotFoundError(f"{tool!r} is not installed; run: apt-get install -y espeak-ng flite sox")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def speak(text: str, out_path: str | Path, voice: OfflineVoice | None = None) -> Path:
    """Speak ``text`` with ``voice`` into ``out_path`` (16 kHz mono 16-bit WAV) and return the path."""
    voice = voice or OfflineVoice()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.wav"
        if voice.engine == "espeak-ng":
            _run(["espeak-ng", "-v", voice.voice, "-w", str(raw), "--", text])
        else:
            _run(["flite", "-voice", voice.voice, "-t", text, "-o", str(raw)])
        _run(["sox", str(raw), "-r", str(SAMPLING_RATE), "-c", "1", "-b", "16", str(out_path)])
    return out_path


def espeak_phonemes(text: str, voice: str = "en-us") -> str:
    """espeak-ng's phoneme mnemonics for ``text`` (what it would say), without producing audio."""
    return " ".join(_run(["espeak-ng", "-q", "-x", "-v", voice, "--", text]).split())

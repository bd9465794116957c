"""Offline Debian voices, and speaking sentences with them into 16 kHz mono 16-bit wav files.

A `Voice` is a synthesizer voice (flite, festival or espeak-ng); a `Speaker` is a voice with a
tempo / pitch variant applied by sox, so one voice gives several speakers. The default voices are
the ones Whisper tiny.en transcribes at 7-18 % WER (shared/README); espeak-ng (29-80 %) is only
for optional extra variety.

Festival starts slowly (~0.2 s), so one festival process speaks a whole list of sentences from a
generated Scheme script; flite and espeak-ng are run once per sentence.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 16000
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)


@dataclass(frozen=True)
class Voice:
    """One synthesizer voice: `engine` is flite, festival or espeak-ng; `voice` its own name for it."""

    engine: str
    voice: str
    apt_package: str

    @property
    def name(self) -> str:
        """Identifier used in speaker ids and configs, e.g. `flite_rms`."""
        return f"{self.engine.replace('-', '')}_{self.voice.replace('-', '')}"


VOICES: dict[str, Voice] = {
    v.name: v
    for v in (
        Voice("flite", "rms", "flite"),
        Voice("flite", "awb", "flite"),
        Voice("flite", "slt", "flite"),
        Voice("flite", "kal16", "flite"),
        Voice("festival", "kal_diphone", "festvox-kallpc16k"),
        Voice("festival", "ked_diphone", "festvox-kdlpc16k"),
        Voice("festival", "cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
        Voice("espeak-ng", "en-us", "espeak-ng"),
        Voice("espeak-ng", "en-gb", "espeak-ng"),
    )
}
DEFAULT_VOICES: tuple[str, ...] = (
    "flite_rms",
    "flite_awb",
    "flite_slt",
    "flite_kal16",
    "festival_kal_diphone",
    "festival_ked_diphone",
    "festival_cmu_us_slt_arctic_hts",
)


@dataclass(frozen=True)
class Speaker:
    """A voice with a sox `tempo` factor and `pitch` shift in cents."""

    voice: Voice
    tempo: float = 1.0
    pitch_cents: int = 0

    @property
    def id(self) -> str:
        """Speaker id, e.g. `flite_rms-t1.10-p+150`."""
        return f"{self.voice.name}-t{self.tempo:.2f}-p{self.pitch_cents:+d}"


def get_voice(name: str) -> Voice:
    """Look a voice up by name and check its synthesizer is installed."""
    if name not in VOICES:
        raise ValueError(f"unknown voice {name!r}: choose from {sorted(VOICES)}")
    voice = VOICES[name]
    program = "text2wave" if voice.engine == "festival" else voice.engine
    if shutil.which(program) is None or shutil.which("sox") is None:
        raise FileNotFoundError(
            f"voice {name} needs `{program}` and `sox` on PATH: `apt-get install {voice.apt_package} sox`."
        )
    if voice.engine == "festival" and not any(any(d.glob(f"*/{voice.voice}")) for d in FESTIVAL_VOICE_DIRS):
        raise FileNotFoundError(
            f"festival voice {voice.voice} is not installed: `apt-get install {voice.apt_package}`."
        )
    return voice


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[:4])} ...` failed ({result.returncode}): {result.stderr.strip()[:500]}")


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _synthesize_raw(voice: Voice, items: list[tuple[str, Path]], tmp: Path) -> None:
    """Write each text to its path in the synthesizer's own format (rate, sample width)."""
    if voice.engine == "flite":
        for text, path in items:
            _run(["flite", "-voice", voice.voice, "-t", text, "-o", str(path)])
    elif voice.engine == "espeak-ng":
        for text, path in items:
            _run(["espeak-ng", "-v", voice.voice, "-w", str(path), text])
    elif voice.engine == "festival":
        script = tmp / "speak.scm"
        lines = [f"(voice_{voice.voice})"]
        lines += [
            f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(str(path))} 'riff)"
            for text, path in items
        ]
        script.write_text("\n".join(lines) + "\n")
        _run(["festival", "--batch", str(script)])
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")


def speak(speaker: Speaker, items: list[tuple[str, Path]]) -> None:
    """Speak each `(text, out_path)` with `speaker` into a 16 kHz mono 16-bit wav at `out_path`."""
    with tempfile.TemporaryDirectory(prefix="most-voice-") as tmp_dir:
        tmp = Path(tmp_dir)
        raw = [(text, tmp / f"{i}.wav") for i, (text, _) in enumerate(items)]
        _synthesize_raw(speaker.voice, raw, tmp)
        effects = ["gain", "-n", "-3"]
        if speaker.pitch_cents:
            effects += ["pitch", str(speaker.pitch_cents)]
        if speaker.tempo != 1.0:
            effects += ["tempo", "-s", f"{speaker.tempo:g}"]
        for (_, raw_path), (_, out_path) in zip(raw, items):
            out_path.parent.mkdir(parents=True, exist_ok=True)
            _run(["sox", "-R", str(raw_path), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out_path), *effects])

"""Offline Debian voices (flite, festival, espeak-ng) speaking text into 16 kHz mono 16-bit wav files.

The one speech synthesizer of the framework: the embedded corpus and the spoken instruction data
(`datamodules`) and the miniature evaluation sets (`lightning_most.evaluation`) all speak through it.
A `Voice` is a synthesizer voice; a `Speaker` is a voice with a tempo / pitch variant applied by sox,
so one voice gives several speakers. `DEFAULT_VOICES` are the ones Whisper tiny.en transcribes at
7-18 % WER (shared/README); espeak-ng (29-80 %) adds variety, and speaks phoneme input
(`[[...]]`) for the pseudo-words of the spoken-LM sets.

Festival starts slowly (~0.2 s), so one festival process speaks a whole list of sentences from a
generated Scheme script; flite and espeak-ng are run once per sentence.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lightning_most.audio.constants import SAMPLE_RATE

ENGINES = ("flite", "festival", "espeak-ng")
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)
FESTIVAL_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
"""The Debian package of each festival voice (flite and espeak-ng voices come with their engine)."""
PEAK_DB = -3.0
"""Corpus speech is normalised to this peak level (dBFS) by `speak`."""


@dataclass(frozen=True)
class Voice:
    """One synthesizer voice: `engine` is flite, festival or espeak-ng; `voice` is the engine's name for it."""

    engine: str
    """`flite`, `festival` or `espeak-ng`."""
    voice: str
    """e.g. `rms` / `slt` / `awb` (flite), `kal_diphone` (festival), `en-us` / `en-gb` (espeak-ng)."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Voice.engine must be one of {ENGINES}, got {self.engine!r}")

    @property
    def name(self) -> str:
        """Identifier used in speaker ids, configs and gold files, e.g. `flite_rms`, `espeakng_enus`."""
        return f"{self.engine.replace('-', '')}_{self.voice.replace('-', '')}"

    @property
    def apt_package(self) -> str:
        """The Debian package that installs this voice."""
        return FESTIVAL_PACKAGES.get(self.voice, "festival") if self.engine == "festival" else self.engine


VOICES: dict[str, Voice] = {
    v.name: v
    for v in (
        Voice("flite", "rms"),
        Voice("flite", "awb"),
        Voice("flite", "slt"),
        Voice("flite", "kal16"),
        Voice("festival", "kal_diphone"),
        Voice("festival", "ked_diphone"),
        Voice("festival", "cmu_us_slt_arctic_hts"),
        Voice("espeak-ng", "en-us"),
        Voice("espeak-ng", "en-gb"),
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


def _program(voice: Voice) -> str:
    return "text2wave" if voice.engine == "festival" else voice.engine


def get_voice(name: str) -> Voice:
    """Look a voice up by name (a key of VOICES) and check its synthesizer is installed."""
    if name not in VOICES:
        raise ValueError(f"unknown voice {name!r}: choose from {sorted(VOICES)}")
    return check_installed(VOICES[name])


def check_installed(voice: Voice) -> Voice:
    """Raise FileNotFoundError naming the apt package if `voice` (or sox) is not installed; return `voice`."""
    program = _program(voice)
    if shutil.which(program) is None or shutil.which("sox") is None:
        raise FileNotFoundError(
            f"voice {voice.name} needs `{program}` and `sox` on PATH: `apt-get install {voice.apt_package} sox`."
        )
    if voice.engine == "festival" and not any(any(d.glob(f"*/{voice.voice}")) for d in FESTIVAL_VOICE_DIRS):
        raise FileNotFoundError(f"festival voice {voice.voice} is not installed: `apt-get install {voice.apt_package}`.")
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
            _run(["espeak-ng", "-v", voice.voice, "-w", str(path), "--", text])
    else:
        script = tmp / "speak.scm"
        lines = [f"(voice_{voice.voice})"]
        lines += [
            f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(str(path))} 'riff)"
            for text, path in items
        ]
        script.write_text("\n".join(lines) + "\n")
        _run(["festival", "--batch", str(script)])


def speak(speaker: Speaker | Voice, items: list[tuple[str, Path]], peak_db: float | None = PEAK_DB) -> None:
    """Speak each `(text, out_path)` into a 16 kHz mono 16-bit wav at `out_path`.

    Args:
        speaker: a Speaker (voice + tempo / pitch variant), or a plain Voice.
        items: the texts and where to write each.
        peak_db: normalise each file's peak to this level (dBFS); None keeps the synthesizer's level.
    """
    speaker = speaker if isinstance(speaker, Speaker) else Speaker(speaker)
    check_installed(speaker.voice)
    with tempfile.TemporaryDirectory(prefix="most-voice-") as tmp_dir:
        tmp = Path(tmp_dir)
        raw = [(text, tmp / f"{i}.wav") for i, (text, _) in enumerate(items)]
        _synthesize_raw(speaker.voice, raw, tmp)
        effects = [] if peak_db is None else ["gain", "-n", f"{peak_db:g}"]
        if speaker.pitch_cents:
            effects += ["pitch", str(speaker.pitch_cents)]
        if speaker.tempo != 1.0:
            effects += ["tempo", "-s", f"{speaker.tempo:g}"]
        for (_, raw_path), (_, out_path) in zip(raw, items):
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            _run(["sox", "-R", str(raw_path), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out_path), *effects])


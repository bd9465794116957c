"""Miniature corpora in each corpus's real on-disk layout, spoken by flite (seconds to write).

Each `write_*` lays out a few sentences as the corpus ships them and returns the folder (and, for
VoxPopuli, the annotations file) that `datamodules.recipes` reads.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import subprocess
from pathlib import Path

import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

LIBRIHEAVY_BOOK = "small/100/sea_fairies_0812_librivox_64kb_mp3/01_baum_sea_fairies_64kb"
COMMONVOICE_COLUMNS = [
    "client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
    "age", "gender", "accents", "variant", "locale", "segment",
]  # fmt: skip
VOXPOPULI_COLUMNS = [
    "session_id", "id_", "speaker_id", "gender", "split", "start_time", "end_time", "original_text", "normed_text",
]  # fmt: skip


def speak(text: str, path: Path, rate: int = 16000) -> float:
    """Write `text` spoken by flite to `path` (format from the suffix, at `rate` Hz); return its duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".tmp.wav")
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(wav)], check=True)
    subprocess.run(
        ["sox", str(wav), "-r", str(rate), "-c", "1", "-b", "16", str(wav.with_suffix(".r.wav"))], check=True
    )
    audio, sr = sf.read(wav.with_suffix(".r.wav"))
    sf.write(path, audio, sr)
    wav.unlink()
    wav.with_suffix(".r.wav").unlink()
    return len(audio) / sr


def _concatenate(texts: list[str], out: Path, scratch: Path) -> list[float]:
    """Speak `texts` one after the other into one file `out`; return each sentence's duration."""
    parts = [scratch / f"{out.stem}.part{i}.wav" for i in range(len(texts))]
    durations = [speak(text, part) for text, part in zip(texts, parts)]
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sox", *map(str, parts), str(out)], check=True)
    for part in parts:
        part.unlink()
    return durations


def write_ljspeech(root: Path, sentences: list[str]) -> Path:
    """LJSpeech-1.1: `metadata.csv` (id|text|normalized) + `wavs/{id}.wav` at 22.05 kHz."""
    rows = []
    for i, text in enumerate(sentences):
        speak(text, root / "wavs" / f"LJ001-{i:04d}.wav", rate=22050)
        rows.append(f"LJ001-{i:04d}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def write_commonvoice(root: Path, splits: dict[str, list[str]], language: str = "en") -> Path:
    """Common Voice: `{lang}/{split}.tsv` + `{lang}/clips/*.mp3` at 48 kHz; returns the corpus folder."""
    lang = root / language
    lang.mkdir(parents=True, exist_ok=True)
    for split, texts in splits.items():
        with open(lang / f"{split}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(COMMONVOICE_COLUMNS)
            for i, text in enumerate(texts):
                clip = f"common_voice_{language}_{split}_{i}.mp3"
                speak(text, lang / "clips" / clip, rate=48000)
                writer.writerow([f"client{i}", clip, f"s{i}", text, "", "2", "0", "twenties", "", "", "", language, ""])
    return root


def write_voxpopuli(root: Path, segments: list[tuple[str, str]], scratch: Path) -> tuple[Path, Path, list[float]]:
    """VoxPopuli: one session `raw_audios/en/2019/{session}_en.ogg` holding `segments` (text, split) one after the
    other, and its `asr_en.tsv.gz`; returns the corpus folder, the annotations and each segment's duration."""
    session = "20190313-0900-PLENARY"
    ogg = root / "raw_audios" / "en" / "2019" / f"{session}_en.ogg"
    durations = _concatenate([text for text, _ in segments], ogg, scratch)
    annotations = scratch / "asr_en.tsv.gz"
    with gzip.open(annotations, "wt", newline="") as f:
        writer = csv.writer(f, delimiter="|")
        writer.writerow(VOXPOPULI_COLUMNS)
        start = 0.0
        for i, ((text, split), duration) in enumerate(zip(segments, durations)):
            row = [session, f"{session}_{i}", f"spk{i}", "female", split, start, start + duration, text]
            writer.writerow(row + [text.lower().rstrip(".")])
            start += duration
    return root, annotations, durations


def write_libriheavy(root: Path, subsets: dict[str, list[str]], scratch: Path) -> Path:
    """Libriheavy: official-style `libriheavy_cuts_{subset}.jsonl.gz` (audio under `download/librilight/...`,
    texts in `custom.texts` = [original, normalized]) over one LibriLight flac per subset; returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    for subset, texts in subsets.items():
        rel = f"{LIBRIHEAVY_BOOK}_{subset}.flac"
        flac = root / "download" / "librilight" / rel
        durations = _concatenate(texts, flac, scratch)
        recording = Recording.from_file(flac, recording_id=rel.removesuffix(".flac"))
        source = dataclasses.replace(recording.sources[0], source=f"download/librilight/{rel}")
        recording = dataclasses.replace(recording, sources=[source])
        cuts, start = [], 0.0
        for i, (text, duration) in enumerate(zip(texts, durations)):
            sup = SupervisionSegment(
                f"{recording.id}_{i}", recording.id, 0.0, duration, speaker="100", language="English",
                custom={"texts": [text, text.upper().rstrip(".")], "pre_texts": ["", ""]},
            )  # fmt: skip
            custom = {"text_path": "download/librilight_text/x/text.txt"}
            cuts.append(MonoCut(f"{recording.id}_{i}", start, duration, 0, supervisions=[sup], recording=recording, custom=custom))
            start += duration
        CutSet(cuts).to_file(root / f"libriheavy_cuts_{subset}.jsonl.gz")
    return root

"""lhotse recipes on miniature corpora written in each corpus's real layout, then through our DataModule."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig
from datamodules.recipes import RecipeConfig, prepare_recipe
from datamodules.units import main as units_main

SENTENCES = ["A penny saved is a penny earned.", "The early bird catches the worm.", "Time flies like an arrow."]


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


def _batch_texts(manifest: Path) -> list[str]:
    sources = [SourceConfig("corpus", "asr", str(manifest))]
    module = MostDataModule(train_sources=sources, task_weights={"asr": 1.0},
        loader=LoaderConfig(num_workers=0, max_duration=60.0))
    batches = list(module.make_eval_loader(sources))
    assert module.make_eval_loader(sources).skipped == {}
    for batch in batches:
        assert batch["audio_features"].shape[0] == int(batch["feature_mask"].sum())
    return [t for b in batches for t in b["texts"]]


def test_librispeech_then_units_for_tts(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    lines = []
    for i, text in enumerate(SENTENCES):
        speak(text, chapter / f"84-121123-{i:04d}.flac")
        lines.append(f"84-121123-{i:04d} {text.upper().rstrip('.')}")
    (chapter / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    paths = prepare_recipe(RecipeConfig("librispeech", str(tmp_path / "LibriSpeech"), str(tmp_path / "out")))
    assert paths == {"dev-clean": tmp_path / "out" / "librispeech_cuts_dev-clean.jsonl.gz"}
    assert sorted(_batch_texts(paths["dev-clean"])) == sorted(s.upper().rstrip(".") for s in SENTENCES)
    units_main(["--train", str(paths["dev-clean"]), "--out_dir", str(tmp_path / "units"), "--units.num_units", "8"])
    with_units = tmp_path / "units" / paths["dev-clean"].name
    sources = [SourceConfig("librispeech", "tts", str(with_units))]
    module = MostDataModule(
        train_sources=sources,
        task_weights={"tts": 1.0},
        loader=LoaderConfig(num_workers=0, max_duration=60.0),
        unit_quantizer=str(tmp_path / "units" / "unit_quantizer.safetensors"),
    )
    batch = next(iter(module.make_eval_loader(sources)))
    assert module.num_units == 8 and len(batch["cut_ids"]) == 3
    assert (batch["modality_ids"] == 1).sum() == (batch["labels"] >= module.specials.text_vocab_size).sum()


def test_ljspeech(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    rows = []
    for i, text in enumerate(SENTENCES):
        speak(text, root / "wavs" / f"LJ001-{i:04d}.wav", rate=22050)
        rows.append(f"LJ001-{i:04d}|{text}|{text}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    paths = prepare_recipe(RecipeConfig("ljspeech", str(root), str(tmp_path / "out")))
    assert sorted(_batch_texts(paths["all"])) == sorted(SENTENCES)  # 22.05 kHz resampled to 16 kHz on the fly


def test_commonvoice(tmp_path):
    lang = tmp_path / "cv-corpus-17.0" / "en"
    header = [
        "client_id",
        "path",
        "sentence_id",
        "sentence",
        "sentence_domain",
        "up_votes",
        "down_votes",
        "age",
        "gender",
        "accents",
        "variant",
        "locale",
        "segment",
    ]
    for split, texts in (("train", SENTENCES[:2]), ("dev", SENTENCES[2:]), ("test", SENTENCES[2:])):
        with open(lang / f"{split}.tsv" if lang.exists() else _mkdir(lang) / f"{split}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            for i, text in enumerate(texts):
                clip = f"common_voice_en_{split}_{i}.mp3"
                speak(text, lang / "clips" / clip, rate=48000)
                writer.writerow([f"client{i}", clip, f"s{i}", text, "", "2", "0", "twenties", "", "", "", "en", ""])
    paths = prepare_recipe(
        RecipeConfig("commonvoice", str(tmp_path / "cv-corpus-17.0"), str(tmp_path / "out"), parts=["train", "dev"])
    )
    assert sorted(paths) == ["dev", "train"] and paths["train"].name == "cv-en_cuts_train.jsonl.gz"
    assert sorted(_batch_texts(paths["train"])) == sorted(SENTENCES[:2])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_voxpopuli(tmp_path):
    session = "20190313-0900-PLENARY"
    parts = [tmp_path / f"part{i}.wav" for i in range(len(SENTENCES))]
    durations = [speak(text, p) for text, p in zip(SENTENCES, parts)]
    ogg = tmp_path / "voxpopuli" / "raw_audios" / "en" / "2019" / f"{session}_en.ogg"
    ogg.parent.mkdir(parents=True)
    subprocess.run(["sox", *map(str, parts), str(ogg)], check=True)
    annotations = tmp_path / "asr_en.tsv.gz"
    fields = [
        "session_id",
        "id_",
        "speaker_id",
        "gender",
        "split",
        "start_time",
        "end_time",
        "original_text",
        "normed_text",
    ]
    with gzip.open(annotations, "wt", newline="") as f:
        writer = csv.writer(f, delimiter="|")
        writer.writerow(fields)
        start = 0.0
        for i, (text, duration) in enumerate(zip(SENTENCES, durations)):
            split = ("train", "dev", "test")[i]
            writer.writerow(
                [
                    session,
                    f"{session}_{i}",
                    f"spk{i}",
                    "female",
                    split,
                    start,
                    start + duration,
                    text,
                    text.lower().rstrip("."),
                ]
            )
            start += duration
    with pytest.raises(FileNotFoundError, match="annotations"):
        prepare_recipe(RecipeConfig("voxpopuli", str(tmp_path / "voxpopuli"), str(tmp_path / "out")))
    config = RecipeConfig("voxpopuli", str(tmp_path / "voxpopuli"), str(tmp_path / "out"), annotations=str(annotations))
    paths = prepare_recipe(config)
    assert paths["train"].name == "voxpopuli-asr-en_cuts_train.jsonl.gz"
    train = CutSet.from_file(paths["train"]).to_eager()
    dev = CutSet.from_file(paths["dev"]).to_eager()
    assert [round(c.duration, 2) for c in train + dev] == [round(d, 2) for d in durations[:2]]  # cut per segment
    assert dev[0].start == pytest.approx(durations[0], abs=0.01)
    assert _batch_texts(paths["dev"]) == [SENTENCES[1].lower().rstrip(".")]


def test_libriheavy(tmp_path):
    rel = "small/100/sea_fairies_0812_librivox_64kb_mp3/01_baum_sea_fairies_64kb.flac"
    flac = tmp_path / "libriheavy" / "download" / "librilight" / rel
    parts = [tmp_path / f"part{i}.wav" for i in range(2)]
    durations = [speak(text, p) for text, p in zip(SENTENCES, parts)]
    flac.parent.mkdir(parents=True)
    subprocess.run(["sox", *map(str, parts), str(flac)], check=True)
    recording = Recording.from_file(flac, recording_id=rel.removesuffix(".flac"))
    recording = dataclasses.replace(
        recording, sources=[dataclasses.replace(recording.sources[0], source=f"download/librilight/{rel}")]
    )
    cuts, start = [], 0.0
    for i, (text, duration) in enumerate(zip(SENTENCES, durations)):
        sup = SupervisionSegment(
            f"{recording.id}_{i}",
            recording.id,
            0.0,
            duration,
            speaker="100",
            language="English",
            custom={"texts": [text, text.upper().rstrip(".")], "pre_texts": ["", ""]},
        )
        cuts.append(
            MonoCut(
                f"{recording.id}_{i}",
                start,
                duration,
                0,
                supervisions=[sup],
                recording=recording,
                custom={"text_path": "download/librilight_text/x/text.txt"},
            )
        )
        start += duration
    CutSet(cuts).to_file(tmp_path / "libriheavy" / "libriheavy_cuts_small.jsonl.gz")
    paths = prepare_recipe(RecipeConfig("libriheavy", str(tmp_path / "libriheavy"), str(tmp_path / "out")))
    assert paths == {"small": tmp_path / "out" / "libriheavy_cuts_small.jsonl.gz"}
    assert sorted(_batch_texts(paths["small"])) == sorted(SENTENCES[:2])
    normalized = prepare_recipe(
        RecipeConfig("libriheavy", str(tmp_path / "libriheavy"), str(tmp_path / "norm"), text="normalized")
    )
    assert sorted(_batch_texts(normalized["small"])) == sorted(s.upper().rstrip(".") for s in SENTENCES[:2])


def test_unknown_corpus_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        RecipeConfig("timit", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="corpus_dir"):
        RecipeConfig("librispeech", str(tmp_path / "nowhere"), str(tmp_path / "out"))

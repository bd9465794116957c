"""lhotse recipes on miniature corpora written in each corpus's real layout, then through our DataModule."""

from __future__ import annotations

from pathlib import Path

import pytest
from lhotse import CutSet

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig
from datamodules.recipes import RecipeConfig, prepare_recipe
from datamodules.units import main as units_main
from tests.datamodules.miniature_corpora import (
    speak,
    write_commonvoice,
    write_libriheavy,
    write_ljspeech,
    write_voxpopuli,
)

SENTENCES = ["A penny saved is a penny earned.", "The early bird catches the worm.", "Time flies like an arrow."]


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
    root = write_ljspeech(tmp_path / "LJSpeech-1.1", SENTENCES)
    paths = prepare_recipe(RecipeConfig("ljspeech", str(root), str(tmp_path / "out")))
    assert sorted(_batch_texts(paths["all"])) == sorted(SENTENCES)  # 22.05 kHz resampled to 16 kHz on the fly


def test_commonvoice(tmp_path):
    splits = {"train": SENTENCES[:2], "dev": SENTENCES[2:], "test": SENTENCES[2:]}
    root = write_commonvoice(tmp_path / "cv-corpus-17.0", splits)
    paths = prepare_recipe(RecipeConfig("commonvoice", str(root), str(tmp_path / "out"), parts=["train", "dev"]))
    assert sorted(paths) == ["dev", "train"] and paths["train"].name == "cv-en_cuts_train.jsonl.gz"
    assert sorted(_batch_texts(paths["train"])) == sorted(SENTENCES[:2])


def test_voxpopuli(tmp_path):
    segments = list(zip(SENTENCES, ("train", "dev", "test")))
    root, annotations, durations = write_voxpopuli(tmp_path / "voxpopuli", segments, tmp_path)
    with pytest.raises(FileNotFoundError, match="annotations"):
        prepare_recipe(RecipeConfig("voxpopuli", str(root), str(tmp_path / "out")))
    config = RecipeConfig("voxpopuli", str(root), str(tmp_path / "out"), annotations=str(annotations))
    paths = prepare_recipe(config)
    assert paths["train"].name == "voxpopuli-asr-en_cuts_train.jsonl.gz"
    train = CutSet.from_file(paths["train"]).to_eager()
    dev = CutSet.from_file(paths["dev"]).to_eager()
    assert [round(c.duration, 2) for c in train + dev] == [round(d, 2) for d in durations[:2]]  # cut per segment
    assert dev[0].start == pytest.approx(durations[0], abs=0.01)
    assert _batch_texts(paths["dev"]) == [SENTENCES[1].lower().rstrip(".")]


def test_libriheavy(tmp_path):
    write_libriheavy(tmp_path / "libriheavy", {"small": SENTENCES[:2]}, tmp_path)
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

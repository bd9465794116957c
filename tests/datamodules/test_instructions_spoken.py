"""Spoken instructions: synthesis, resumption, bad rows, the stage-2 batch layouts and task mix."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from lhotse import load_manifest

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.dataset import MostDataset
from datamodules.generated_instructions import GeneratedInstructionsConfig
from datamodules.instruction_datamodule import EmbeddedInstructionDataModule
from datamodules.instructions import InstructionPair, write_instructions
from datamodules.mixing import STAGE2_TASK_WEIGHTS, SourceConfig, open_source
from datamodules.spoken_instructions import SpokenInstructionsConfig, prepare_spoken_instructions
from lightning_most.batch import IGNORE_INDEX, TASKS
from lightning_most.evaluation.spoken_qa import load_spoken_qa
from tests.datamodules.conftest import TINY as TINY_CORPUS

TINY = SpokenInstructionsConfig(
    instructions=GeneratedInstructionsConfig(
        relations=("addition", "month_after", "capital_of"), train_per_relation=6, eval_per_relation=3
    ),
    num_spoken_train=8,
    voices=("flite_rms", "flite_slt"),
    variants=((1.0, 0), (1.1, 150)),
    num_test_speakers=1,
    chunk_size=4,
)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory, tiny_corpus):
    """A tiny spoken-instruction folder with answer units from the tiny corpus's quantizer."""
    return prepare_spoken_instructions(tmp_path_factory.mktemp("instructions"), TINY, tiny_corpus.unit_quantizer)


def test_cuts_hold_spoken_prompts_with_the_response_as_supervision(spoken):
    summary = json.loads(spoken.summary.read_text())
    assert {s: c["spoken"] for s, c in summary["splits"].items()} == {"train": 8, "dev": 9, "test": 9}
    assert summary["splits"]["train"]["pairs"] == 18 and summary["skipped"] == {}
    train = load_manifest(spoken.cuts["train"])
    cut = train[0]
    assert cut.duration > 0.3 and cut.load_audio().shape[1] > 0
    assert cut.supervisions[0].text == cut.custom["answers"][0] and cut.custom["prompt"].endswith(("?", "."))
    units = cut.load_answer_units()
    assert units.ndim == 1 and units.size > 0 and 0 <= units.min() and units.max() < 16
    speakers = {s: set(summary["splits"][s]["speakers"]) for s in ("train", "dev", "test")}
    assert speakers["test"] and not speakers["test"] & (speakers["train"] | speakers["dev"])
    qa = load_spoken_qa(spoken.qa["test"])
    assert len(qa.items) == 9 and all(item.audio.is_file() for item in qa.items)


def test_rerun_reuses_and_resumes(spoken, tiny_corpus):
    wavs = sorted((spoken.root / "wav").rglob("*.wav"))
    before = {p: p.stat().st_mtime_ns for p in wavs}
    wavs[0].unlink()
    spoken.summary.unlink()
    prepare_spoken_instructions(spoken.root, TINY, tiny_corpus.unit_quantizer)
    assert wavs[0].is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p != wavs[0])
    stamp = spoken.summary.stat().st_mtime_ns
    prepare_spoken_instructions(spoken.root, TINY, tiny_corpus.unit_quantizer)  # same config: reused as is
    assert spoken.summary.stat().st_mtime_ns == stamp


def test_bad_rows_are_counted_and_reported(tmp_path):
    good = [InstructionPair(f"ok-{i}", f"What is {i} plus {i}?", str(2 * i)) for i in range(3)]
    bad = [
        InstructionPair("empty", "   ", "4"),
        InstructionPair("symbols", "?!", "4"),
        InstructionPair("long", "word " * 61, "4"),
        InstructionPair("no-answer", "What is this?", ""),
    ]
    files = {}
    for split in ("train", "dev", "test"):
        files[split] = str(tmp_path / f"{split}.jsonl")
        write_instructions(good + bad, files[split])
    config = SpokenInstructionsConfig(
        instruction_files=files, voices=("flite_rms",), variants=((1.0, 0), (1.1, 150)), num_test_speakers=1,
        speak_answers=False, num_jobs=1,
    )
    paths = prepare_spoken_instructions(tmp_path / "out", config)
    summary = json.loads(paths.summary.read_text())
    assert summary["skipped"] == {"empty_text": 6, "non_text": 3, "too_long": 3}
    assert summary["splits"]["train"]["spoken"] == 3


def test_stage2_layouts_mask_everything_but_the_response(spoken):
    dataset = MostDataset("byte")
    s = dataset.specials
    speech = open_source(SourceConfig("spoken", "speech_instruct", str(spoken.cuts["train"])), "byte", 50.0, 0)
    text = open_source(SourceConfig("generated", "text_instruct", str(spoken.text["train"])), "byte", 50.0, 0)
    cuts = [next(iter(speech)), next(iter(text))]
    batch, skipped = dataset[cuts]
    assert skipped == {}
    assert batch["task_ids"].tolist() == [TASKS.index("speech_instruct"), TASKS.index("text_instruct")]
    for row, cut in enumerate(cuts):
        response = cut.supervisions[0].text
        targets = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert targets == [*response.encode(), s.eos]
    prompt = cuts[1].custom["prompt"]
    assert bytes(batch["input_ids"][1, 2 : 2 + len(prompt)].tolist()).decode() == prompt
    assert batch["input_ids"][1, 2 + len(prompt)] == s.answer
    assert batch["feature_mask"][0].sum() > 0 and not batch["feature_mask"][1].any()


def test_stage2_task_mix_is_realised_over_3000_samples(spoken, tiny_corpus):
    train = str(tiny_corpus.cuts["train"])
    sources = [
        SourceConfig("spoken", "speech_instruct", str(spoken.cuts["train"])),
        SourceConfig("generated", "text_instruct", str(spoken.text["train"])),
        SourceConfig("embedded", "asr", train),
        SourceConfig("embedded", "tts", train),
    ]
    module = MostDataModule(sources, task_weights=STAGE2_TASK_WEIGHTS,
        loader=LoaderConfig(num_workers=0, max_duration=40.0, max_cut_duration=20.0))
    tasks: Counter = Counter()
    for cuts in module.make_train_loader().sampler:
        tasks.update(c.custom["task"] for c in cuts)
        if sum(tasks.values()) >= 3000:
            break
    total = sum(tasks.values())
    for task, weight in STAGE2_TASK_WEIGHTS.items():
        assert abs(tasks[task] / total - weight) <= 0.03, (task, tasks)


def test_embedded_instruction_data_module_mixes_stage2_tasks(spoken, tiny_corpus):
    module = EmbeddedInstructionDataModule(
        corpus_dir=str(tiny_corpus.root), corpus=TINY_CORPUS, instructions_dir=str(spoken.root), instructions=TINY,
        loader=LoaderConfig(num_workers=0, max_duration=20.0, max_cut_duration=20.0),
    )
    stamp = spoken.summary.stat().st_mtime_ns
    module.prepare_data()  # both folders are built with these configs: reused
    assert spoken.summary.stat().st_mtime_ns == stamp
    assert sorted(s.task for s in module.train_sources) == ["asr", "speech_instruct", "text_instruct", "tts"]
    assert module.task_weights == STAGE2_TASK_WEIGHTS
    assert {s.task for s in module.val_sources} == {"asr", "tts", "speech_instruct", "text_instruct"}
    assert module.spoken_qa_files["test"].is_file()
    tasks = {TASKS[i] for batch in module.make_eval_loader(module.val_sources) for i in batch["task_ids"].tolist()}
    assert tasks == {"asr", "tts", "speech_instruct", "text_instruct"}
    with_lm = EmbeddedInstructionDataModule(
        corpus_dir=str(tiny_corpus.root), corpus=TINY_CORPUS, instructions_dir=str(spoken.root), instructions=TINY,
        task_weights={**STAGE2_TASK_WEIGHTS, "text_lm": 0.1}, loader=LoaderConfig(num_workers=0),
    )
    assert "text_lm" in {s.task for s in with_lm.train_sources}


def test_prepare_instructions_command(tmp_path, spoken, tiny_corpus, capsys):
    from lightning_most.main import main

    main([
        "prepare_instructions", "--out_dir", str(spoken.root), "--unit_quantizer", str(tiny_corpus.unit_quantizer),
        "--config.instructions.relations", "[addition, month_after, capital_of]",
        "--config.instructions.train_per_relation", "6", "--config.instructions.eval_per_relation", "3",
        "--config.num_spoken_train", "8", "--config.voices", "[flite_rms, flite_slt]",
        "--config.variants", "[[1.0, 0], [1.1, 150]]", "--config.num_test_speakers", "1", "--config.chunk_size", "4",
    ])
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["spoken"] == 8

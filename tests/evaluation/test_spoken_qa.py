"""Spoken QA: alias matching, the jsonl loader on the miniature set, both accuracy modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lightning_most.audio.waveforms import read_wav
from lightning_most.evaluation.spoken_qa import (
    QaConfig,
    answer_matches,
    evaluate_spoken_qa_speech,
    evaluate_spoken_qa_text,
    load_spoken_qa,
)
from lightning_most.evaluation.spoken_qa_miniature import SpokenQaMiniatureConfig, build_spoken_qa_miniature

from .conftest import waveform_key


@pytest.mark.parametrize(
    ("output", "aliases", "expected"),
    [
        ("Paris.", ["paris"], True),
        ("The capital is PARIS, of course", ["Paris"], True),
        ("paris", ["par"], False),
        ("comparison", ["paris"], False),
        ("It is the Eiffel Tower.", ["Eiffel Tower"], True),
        ("the tower of Eiffel", ["Eiffel Tower"], False),
        ("I love beatles songs", ["The Beatles"], True),
        ("the beatles", ["beatles"], True),
        ("a", ["the"], False),
        ("the answer is 7", ["seven"], True),
        ("seven", ["7"], True),
        ("New York City", ["York", "Boston"], True),
        ("nothing here", ["Boston", "Chicago"], False),
        ("", ["paris"], False),
        ("Rock-and-roll!", ["rock and roll"], True),
    ],
)
def test_answer_matches(output: str, aliases: list[str], expected: bool) -> None:
    assert answer_matches(output, aliases) is expected


@pytest.fixture(scope="module")
def qa_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_spoken_qa_miniature(tmp_path_factory.mktemp("qa"), SpokenQaMiniatureConfig(num_questions=6))


def test_loader_reads_the_miniature(qa_jsonl: Path) -> None:
    qa_set = load_spoken_qa(qa_jsonl)
    assert qa_set.name == "questions" and len(qa_set.items) == 6
    assert len({item.question for item in qa_set.items}) == 6
    first = qa_set.items[0]
    assert first.audio.is_file() and read_wav(first.audio).numel() > 16000 * 0.5
    assert answer_matches(first.answers[0], first.answers)


class OracleAnswerer:
    """Knows the answers of the miniature set, except for the questions listed in ``wrong``."""

    def __init__(self, qa_jsonl: Path, wrong: set[str]) -> None:
        qa_set = load_spoken_qa(qa_jsonl)
        self.answer_of = {
            waveform_key(read_wav(item.audio)): "no idea" if item.item_id in wrong else f"It is {item.answers[0]}."
            for item in qa_set.items
        }
        self.spoken: dict[str, str] = {}

    def answer_text(self, waveforms: list[Tensor]) -> list[str]:
        return [self.answer_of[waveform_key(w)] for w in waveforms]

    def answer_speech(self, waveforms: list[Tensor]) -> list[Tensor]:
        speech = []
        for w in waveforms:
            tone = torch.full((1600 + len(self.spoken),), 0.01 * (1 + len(self.spoken)))
            self.spoken[waveform_key(tone)] = self.answer_of[waveform_key(w)]
            speech.append(tone)
        return speech


class LookupJudge:
    """Transcribes the answerer's stand-in 'speech' by looking it up."""

    def __init__(self, answerer: OracleAnswerer) -> None:
        self.answerer = answerer

    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        return [self.answerer.spoken[waveform_key(w)] for w in waveforms]


def test_speech_to_text_accuracy(qa_jsonl: Path) -> None:
    result = evaluate_spoken_qa_text(
        OracleAnswerer(qa_jsonl, wrong={"q0001"}), load_spoken_qa(qa_jsonl), QaConfig(batch_size=4)
    )
    assert result.mode == "speech_to_text"
    assert result.accuracy == pytest.approx(5 / 6)
    assert [r.correct for r in result.records] == [True, False, True, True, True, True]


def test_speech_to_speech_accuracy(qa_jsonl: Path) -> None:
    answerer = OracleAnswerer(qa_jsonl, wrong={"q0000", "q0005"})
    result = evaluate_spoken_qa_speech(answerer, LookupJudge(answerer), load_spoken_qa(qa_jsonl))
    assert result.mode == "speech_to_speech"
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.records[0].output == "no idea"


def test_loader_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "q.wav").write_bytes(b"")
    lines = [{"audio": "q.wav", "question": "q?", "answers": ["a"]}, {"audio": "q.wav", "question": "q?"}]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(ValueError, match=r"set\.jsonl:2: missing field 'answers'"):
        load_spoken_qa(tmp_path / "set.jsonl")


def test_accuracy_per_label(qa_jsonl: Path, tmp_path: Path) -> None:
    """Questions labelled with `relation` / `holdout` (the generated set's fields) get an accuracy per label value."""
    rows = [json.loads(line) for line in qa_jsonl.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["audio"] = str((qa_jsonl.parent / row["audio"]).resolve())
        row["relation"] = "capital_of" if i < 4 else "addition"
        row["holdout"] = "template" if i % 2 else "entity"
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(row) for row in rows))
    wrong = {rows[0]["id"], rows[4]["id"], rows[5]["id"]}  # capital_of 3/4, addition 0/2; entity 1/3, template 2/3
    result = evaluate_spoken_qa_text(OracleAnswerer(labelled, wrong), load_spoken_qa(labelled))
    metrics = result.metrics()
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["accuracy_relation_capital_of"] == pytest.approx(3 / 4)
    assert metrics["accuracy_relation_addition"] == 0.0
    assert metrics["accuracy_holdout_entity"] == pytest.approx(1 / 3)
    assert metrics["accuracy_holdout_template"] == pytest.approx(2 / 3)
    unlabelled = evaluate_spoken_qa_text(OracleAnswerer(qa_jsonl, wrong), load_spoken_qa(qa_jsonl)).metrics()
    assert set(unlabelled) == {"accuracy", "num_questions"}
    rows[0]["relation"] = 3
    labelled.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(ValueError, match=r"labelled\.jsonl:1: relation, holdout must be strings"):
        load_spoken_qa(labelled)

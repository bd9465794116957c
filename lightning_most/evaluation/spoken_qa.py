"""Spoken question answering accuracy (Llama Questions, spoken TriviaQA, spoken WebQ style sets).

On-disk layout read by ``load_spoken_qa``: one JSON Lines file per set, one question a line::

    {"id": "q0001", "audio": "audio/q0001.wav", "question": "What is the capital of France?",
     "answers": ["Paris", "City of Paris"]}

``audio`` is a path relative to the jsonl file's folder (or absolute); ``answers`` lists every
accepted alias. ``id`` is optional (the line number is used). Optional string fields ``relation`` and
``holdout`` (the generated set's question kind and what was held out: ``template``, ``entity``) label each
question; a result then also reports its accuracy per label value (``accuracy_relation_capital_of``, ...).

An answer is correct when one alias, normalised, occurs in the normalised output as a run of whole
words. Normalisation is ``normalize_text`` followed by dropping the articles ``a an the``, so
"Paris" is found in "It's Paris." and "the Beatles" in "beatles", but "par" is not found in
"paris". Speech-to-speech answers are transcribed by a judge first, then matched the same way.
``exact_match`` is the stricter score of the generated short-answer questions: the whole normalised
output must equal an alias (numbers are spelt out by ``normalize_text``, so "19" equals "nineteen").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.waveforms import read_wav, to_mono_16k
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.evaluation.protocols import SpokenQuestionAnswerer, Transcriber
from lightning_most.evaluation.tts import judge_transcripts

ARTICLES = frozenset({"a", "an", "the"})
LABEL_FIELDS = ("relation", "holdout")
"""Optional per-question fields whose values split the accuracy (``QaResult.metrics``)."""


@dataclass
class QaItem:
    """One spoken question with its accepted answers."""

    item_id: str
    audio: Path
    question: str
    answers: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    """Values of the ``LABEL_FIELDS`` the line has, e.g. {"relation": "capital_of", "holdout": "template"}."""


@dataclass
class QaSet:
    """A named list of spoken questions, e.g. ``llama_questions``."""

    name: str
    items: list[QaItem]


def load_spoken_qa(jsonl_path: str | Path, name: str | None = None) -> QaSet:
    """Read a spoken QA set from a JSON Lines file (layout in the module docstring)."""
    jsonl_path = Path(jsonl_path)
    if not jsonl_path.is_file():
        raise FileNotFoundError(f"spoken QA file {jsonl_path} not found")
    items = []
    for number, line in enumerate(jsonl_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{jsonl_path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from error
        for key in ("audio", "question", "answers"):
            if key not in row:
                raise ValueError(f"{where}: missing field {key!r}; each line needs audio, question, answers")
        answers = row["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: 'answers' must be a non-empty list of strings, got {answers!r}")
        audio = jsonl_path.parent / row["audio"]
        if not audio.is_file():
            raise FileNotFoundError(f"{where}: audio file {audio} not found")
        labels = {key: row[key] for key in LABEL_FIELDS if key in row}
        if not all(isinstance(value, str) for value in labels.values()):
            raise ValueError(f"{where}: {', '.join(labels)} must be strings, got {labels!r}")
        items.append(QaItem(str(row.get("id", number)), audio, row["question"], answers, labels))
    if not items:
        raise ValueError(f"{jsonl_path} holds no questions")
    return QaSet(name or jsonl_path.stem, items)


def normalize_answer(text: str) -> list[str]:
    """Words of ``normalize_text(text)`` without the articles a, an, the."""
    return [word for word in normalize_text(text).split() if word not in ARTICLES]


def answer_matches(output: str, aliases: Sequence[str]) -> bool:
    """True when some normalised alias occurs in the normalised output as a run of whole words."""
    words = normalize_answer(output)
    for alias in aliases:
        target = normalize_answer(alias)
        if target and any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1)):
            return True
    return False


def exact_match(output: str, aliases: Sequence[str]) -> bool:
    """True when the normalised output equals a normalised alias (short answers: "19" = "Nineteen." = "the 19")."""
    words = normalize_answer(output)
    return bool(words) and any(words == normalize_answer(alias) for alias in aliases)


@dataclass
class QaConfig:
    """How a spoken QA evaluation runs."""

    batch_size: int = 4
    """Questions passed to the answerer per call."""
    judge_batch_size: int = 8
    """Spoken answers passed to the judge per call (speech-to-speech only)."""
    answer_sampling_rate: int = SAMPLE_RATE
    """Sampling rate of ``answer_speech`` output; resampled to 16 kHz for the judge when different."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "judge_batch_size", "answer_sampling_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"QaConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class QaRecord:
    """One answered question: the text that was matched (answer, or judge transcript) and the verdict."""

    item_id: str
    question: str
    answers: list[str]
    output: str
    correct: bool
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class QaResult:
    """Accuracy of one QA set in one mode (``speech_to_text`` or ``speech_to_speech``)."""

    name: str
    mode: str
    accuracy: float
    num_questions: int
    records: list[QaRecord] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for reports and loggers: accuracy, and accuracy per label value when questions have labels."""
        metrics = {"accuracy": self.accuracy, "num_questions": float(self.num_questions)}
        groups: dict[str, list[bool]] = {}
        for record in self.records:
            for key, value in record.labels.items():
                groups.setdefault(f"accuracy_{key}_{value}", []).append(record.correct)
        metrics.update({name: sum(verdicts) / len(verdicts) for name, verdicts in sorted(groups.items())})
        return metrics


def _answer_in_batches(
    answer: Callable[[list[Tensor]], list[Any]], items: Sequence[QaItem], batch_size: int, method: str
) -> list[Any]:
    outputs = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        produced = answer([read_wav(item.audio) for item in batch])
        if len(produced) != len(batch):
            raise ValueError(f"{method} returned {len(produced)} answers for {len(batch)} questions")
        outputs.extend(produced)
    return outputs


def _score(qa_set: QaSet, mode: str, outputs: Sequence[str]) -> QaResult:
    records = [
        QaRecord(item.item_id, item.question, item.answers, output, answer_matches(output, item.answers), item.labels)
        for item, output in zip(qa_set.items, outputs)
    ]
    accuracy = sum(record.correct for record in records) / len(records)
    return QaResult(qa_set.name, mode, accuracy, len(records), records)


def evaluate_spoken_qa_text(
    answerer: SpokenQuestionAnswerer, qa_set: QaSet, config: QaConfig | None = None
) -> QaResult:
    """Speech-to-text accuracy: the text answer contains an accepted alias."""
    config = config or QaConfig()
    outputs = _answer_in_batches(answerer.answer_text, qa_set.items, config.batch_size, "answer_text")
    return _score(qa_set, "speech_to_text", outputs)


def evaluate_spoken_qa_speech(
    answerer: SpokenQuestionAnswerer, judge: Transcriber, qa_set: QaSet, config: QaConfig | None = None
) -> QaResult:
    """Speech-to-speech accuracy: the judge's transcript of the spoken answer contains an accepted alias."""
    config = config or QaConfig()
    spoken: list[Tensor] = _answer_in_batches(answerer.answer_speech, qa_set.items, config.batch_size, "answer_speech")
    spoken = [to_mono_16k(waveform.detach().cpu(), config.answer_sampling_rate) for waveform in spoken]
    return _score(qa_set, "speech_to_speech", judge_transcripts(judge, spoken, config.judge_batch_size))

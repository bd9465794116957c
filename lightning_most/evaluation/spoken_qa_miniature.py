"""Offline miniature spoken QA set: generated questions with computed answers, spoken by flite.

Questions come from three generators whose answers are computed, not typed in: small additions
("What is three plus four?" -> "seven"/"7"), the weekday after a weekday and the month after a
month (from the ``calendar`` module). The set is written in the layout ``load_spoken_qa`` reads:
``<out_dir>/questions.jsonl`` and ``<out_dir>/audio/<id>.wav``.
"""

from __future__ import annotations

import calendar
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lightning_most.audio.offline_voices import Voice, speak
from lightning_most.evaluation.normalize import number_to_words


@dataclass
class SpokenQaMiniatureConfig:
    """Size, voice and seed of the miniature spoken QA set."""

    num_questions: int = 6
    """Questions to write, drawn in turn from the three generators."""
    voice: Voice = field(default_factory=lambda: Voice("flite", "rms"))
    """Voice that speaks the questions."""
    seed: int = 0
    """Seed for the operands, days and months."""

    def __post_init__(self) -> None:
        if self.num_questions < 1:
            raise ValueError(f"SpokenQaMiniatureConfig.num_questions must be >= 1, got {self.num_questions}")


def addition_question(rng: random.Random) -> tuple[str, list[str]]:
    """A 'what is a plus b' question with its answer in words and in digits."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {number_to_words(str(a))} plus {number_to_words(str(b))}?", [
        number_to_words(str(a + b)),
        str(a + b),
    ]


def next_weekday_question(rng: random.Random) -> tuple[str, list[str]]:
    """A 'which day comes after X' question."""
    day = rng.randrange(7)
    return f"Which day of the week comes after {calendar.day_name[day]}?", [calendar.day_name[(day + 1) % 7]]


def next_month_question(rng: random.Random) -> tuple[str, list[str]]:
    """A 'which month comes after X' question."""
    month = rng.randint(1, 12)
    return f"Which month comes after {calendar.month_name[month]}?", [calendar.month_name[month % 12 + 1]]


GENERATORS = (addition_question, next_weekday_question, next_month_question)


def _unseen_question(
    generator: Callable[[random.Random], tuple[str, list[str]]], rng: random.Random, seen: set[str], attempts: int = 100
) -> tuple[str, list[str]]:
    for _ in range(attempts):
        question, answers = generator(rng)
        if question not in seen:
            seen.add(question)
            return question, answers
    raise ValueError(f"{generator.__name__} ran out of new questions; lower SpokenQaMiniatureConfig.num_questions")


def build_spoken_qa_miniature(out_dir: str | Path, config: SpokenQaMiniatureConfig | None = None) -> Path:
    """Write the miniature set under ``out_dir``; return the path of its ``questions.jsonl``."""
    config = config or SpokenQaMiniatureConfig()
    out_dir = Path(out_dir)
    rng = random.Random(config.seed)
    lines, seen = [], set()
    for index in range(config.num_questions):
        question, answers = _unseen_question(GENERATORS[index % len(GENERATORS)], rng, seen)
        item_id = f"q{index:04d}"
        # the synthesizer's level (no peak normalisation), as the set was first built
        speak(config.voice, [(question, out_dir / "audio" / f"{item_id}.wav")], peak_db=None)
        row = {"id": item_id, "audio": f"audio/{item_id}.wav", "question": question, "answers": answers}
        lines.append(json.dumps(row))
    jsonl = out_dir / "questions.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return jsonl

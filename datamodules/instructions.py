"""Instruction pairs (prompt -> response) and their jsonl shards, the currency of stage 2's data.

A pair is one instruction and the answer the model is trained to give. Shards are the text shards
of `text.py` with two more fields, so the text-instruct task streams them like text-LM shards:

    {"id": "capital_of-train-00012", "prompt": "What is the capital of Peru?", "text": "Lima",
     "answers": ["Lima"], "relation": "capital_of", "holdout": ""}

`text` is the response (the loss target); `answers` every accepted answer for exact-match scoring
(`lightning_most.evaluation.spoken_qa.exact_match`); `relation` the generator or corpus the pair
comes from; `holdout` says what a dev/test pair holds out of train: "" (nothing), "entity",
"template" or "entity+template" (`generated_instructions.py`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lhotse.serialization import open_best

HOLDOUTS: tuple[str, ...] = ("", "entity", "template", "entity+template")


@dataclass(frozen=True)
class InstructionPair:
    """One instruction and its response (see the module docstring)."""

    id: str
    prompt: str
    response: str
    answers: tuple[str, ...] = field(default_factory=tuple)
    relation: str = ""
    holdout: str = ""

    def record(self) -> dict:
        """The shard line of this pair (`text` holds the response)."""
        row = asdict(self)
        row["text"] = row.pop("response")
        row["answers"] = list(self.answers or (self.response,))
        return row


def write_instructions(pairs: Iterable[InstructionPair], path: str | Path) -> int:
    """Write pairs as one jsonl(.gz) shard; return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    count = 0
    with opener(path, "wt", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.record()) + "\n")
            count += 1
    return count


def read_instructions(path: str | Path) -> Iterator[InstructionPair]:
    """Read the pairs of a shard written by `write_instructions` (a bad line raises, naming file and line)."""
    with open_best(str(path), "r") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield InstructionPair(
                    id=str(row["id"]),
                    prompt=row["prompt"],
                    response=row["text"],
                    answers=tuple(row.get("answers") or (row["text"],)),
                    relation=row.get("relation", ""),
                    holdout=row.get("holdout", ""),
                )
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"line {line_no} of {path} is not an instruction pair ({type(e).__name__}: {e}); each line needs "
                    '{"id", "prompt", "text"} and optionally "answers", "relation", "holdout".'
                ) from e

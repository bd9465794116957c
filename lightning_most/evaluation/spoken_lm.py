"""Spoken-LM pair accuracy (sWUGGY, sBLIMP, sStoryCloze, tStoryCloze) from unit log-likelihoods.

On-disk layouts read here:

- ZeroSpeech 2021 sLM21 (sWUGGY, sBLIMP): ``<root>/lexical/<split>/*.wav`` with
  ``<root>/lexical/<split>/gold.csv`` (columns ``filename,id,voice,frequency,word,phones,correct``)
  and ``<root>/syntactic/<split>/*.wav`` with ``gold.csv`` (columns
  ``filename,voice,type,subtype,id,correct,transcription``). ``filename`` is the wav name without
  extension; the two rows sharing ``id`` and ``voice`` form one pair; ``correct`` is 1 for the real
  word / grammatical sentence and 0 for the other. Only ``filename, id, voice, correct`` are required.
- Spoken StoryCloze (sStoryCloze, tStoryCloze): one folder per set holding
  ``<pair id>_correct.wav`` and ``<pair id>_incorrect.wav`` (story + true ending, story + false ending).

Each pair is scored by the scorer's unit log-likelihood of both items, both as the sum over units
and as the mean per unit. A pair counts 1 when the correct item scores higher, 0.5 on a tie, 0
otherwise (the ZeroSpeech 2021 rule); accuracy is the mean over pairs (for sLM21, over pairs of
every voice).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_most.audio.waveforms import read_wav
from lightning_most.evaluation.protocols import AudioLikelihoodScorer

ZEROSPEECH_REQUIRED_COLUMNS = ("filename", "id", "voice", "correct")


@dataclass
class MinimalPair:
    """Two recordings of which exactly one is correct; ``first`` and ``second`` keep the dataset's order."""

    pair_id: str
    first: Path
    second: Path
    correct: int
    """0 when ``first`` is the correct item, 1 when ``second`` is."""
    group: str = ""
    """Subset label for per-group accuracy (sBLIMP subtype, sWUGGY frequency band); may be empty."""


@dataclass
class PairSet:
    """A named list of minimal pairs, e.g. ``sWUGGY`` dev."""

    name: str
    pairs: list[MinimalPair]


def _read_gold(gold: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not gold.is_file():
        raise FileNotFoundError(f"{gold} not found; expected the ZeroSpeech 2021 gold.csv beside the wav files")
    with gold.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{gold}: missing columns {missing}; its header is {reader.fieldnames}")
        return list(reader)


def _load_zerospeech(task_dir: Path, name: str, group_column: str) -> PairSet:
    gold = task_dir / "gold.csv"
    rows = _read_gold(gold, ZEROSPEECH_REQUIRED_COLUMNS)
    grouped: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        grouped[(row["id"], row["voice"])].append(row)
    pairs = []
    for (pair_id, voice), members in grouped.items():
        labels = sorted(row["correct"] for row in members)
        if labels != ["0", "1"]:
            raise ValueError(
                f"{gold}: id {pair_id!r} voice {voice!r} has correct={labels}; each id and voice needs "
                "exactly one row with correct=1 and one with correct=0"
            )
        first, second = (task_dir / f"{row['filename']}.wav" for row in members)
        for path in (first, second):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is listed in {gold} but missing")
        correct = 0 if members[0]["correct"] == "1" else 1
        pairs.append(MinimalPair(f"{pair_id}/{voice}", first, second, correct, members[0].get(group_column, "")))
    if not pairs:
        raise ValueError(f"{gold} holds no pairs")
    return PairSet(name, pairs)


def load_swuggy(root: str | Path, split: str = "dev") -> PairSet:
    """Read sWUGGY (ZeroSpeech 2021 lexical) pairs from ``<root>/lexical/<split>``."""
    return _load_zerospeech(Path(root) / "lexical" / split, "sWUGGY", group_column="frequency")


def load_sblimp(root: str | Path, split: str = "dev") -> PairSet:
    """Read sBLIMP (ZeroSpeech 2021 syntactic) pairs from ``<root>/syntactic/<split>``."""
    return _load_zerospeech(Path(root) / "syntactic" / split, "sBLIMP", group_column="subtype")


def load_story_cloze(directory: str | Path, name: str = "sStoryCloze") -> PairSet:
    """Read spoken StoryCloze pairs (``<id>_correct.wav``, ``<id>_incorrect.wav``) from ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{name}: directory {directory} not found")
    pairs = []
    for positive in sorted(directory.glob("*_correct.wav")):
        pair_id = positive.name.removesuffix("_correct.wav")
        negative = directory / f"{pair_id}_incorrect.wav"
        if not negative.is_file():
            raise FileNotFoundError(f"{name}: {positive} has no partner {negative}")
        pairs.append(MinimalPair(pair_id, positive, negative, correct=0))
    orphans = {p.name.removesuffix("_incorrect.wav") for p in directory.glob("*_incorrect.wav")}
    orphans -= {pair.pair_id for pair in pairs}
    if orphans:
        raise FileNotFoundError(f"{name}: {directory} has *_incorrect.wav without *_correct.wav for {sorted(orphans)}")
    if not pairs:
        raise ValueError(f"{name}: no <id>_correct.wav / <id>_incorrect.wav pairs in {directory}")
    return PairSet(name, pairs)


@dataclass
class PairScoringConfig:
    """How pairs are scored."""

    batch_size: int = 16
    """Waveforms passed to ``AudioLikelihoodScorer.log_likelihood`` per call (two per pair)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"PairScoringConfig.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class PairScore:
    """Log-likelihood sums and unit counts of both items of a pair, in dataset order."""

    pair_id: str
    group: str
    correct: int
    first: tuple[float, int]
    second: tuple[float, int]


@dataclass
class PairAccuracyResult:
    """Accuracy of one pair set by summed and by length-normalised (mean per unit) log-likelihood."""

    name: str
    accuracy_sum: float
    accuracy_mean: float
    num_pairs: int
    accuracy_mean_by_group: dict[str, float] = field(default_factory=dict)
    pairs: list[PairScore] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for reports and loggers."""
        return {
            "accuracy_sum": self.accuracy_sum,
            "accuracy_mean": self.accuracy_mean,
            "num_pairs": float(self.num_pairs),
        }


def pair_outcome(correct_score: float, incorrect_score: float) -> float:
    """1 if the correct item scores higher, 0.5 on a tie, 0 otherwise."""
    if correct_score == incorrect_score:
        return 0.5
    return 1.0 if correct_score > incorrect_score else 0.0


def _mean_per_unit(score: tuple[float, int], path: Path) -> float:
    total, units = score
    if units < 1:
        raise ValueError(f"the scorer returned {units} units for {path}; every item needs at least one unit")
    return total / units


def score_pairs(
    scorer: AudioLikelihoodScorer, pair_set: PairSet, config: PairScoringConfig | None = None
) -> PairAccuracyResult:
    """Score every pair of ``pair_set`` with ``scorer`` and return both accuracies."""
    config = config or PairScoringConfig()
    if not pair_set.pairs:
        raise ValueError(f"pair set {pair_set.name!r} has no pairs")
    paths = [path for pair in pair_set.pairs for path in (pair.first, pair.second)]
    scores: list[tuple[float, int]] = []
    for start in range(0, len(paths), config.batch_size):
        batch = paths[start : start + config.batch_size]
        answer = scorer.log_likelihood([read_wav(path) for path in batch])
        if len(answer) != len(batch):
            raise ValueError(
                f"{type(scorer).__name__}.log_likelihood returned {len(answer)} scores for {len(batch)} waveforms"
            )
        scores.extend((float(total), int(units)) for total, units in answer)
    by_sum, by_mean = [], []
    group_outcomes: dict[str, list[float]] = defaultdict(list)
    records = []
    for index, pair in enumerate(pair_set.pairs):
        first, second = scores[2 * index], scores[2 * index + 1]
        good, bad = (first, second) if pair.correct == 0 else (second, first)
        by_sum.append(pair_outcome(good[0], bad[0]))
        mean_first, mean_second = _mean_per_unit(first, pair.first), _mean_per_unit(second, pair.second)
        good_mean, bad_mean = (mean_first, mean_second) if pair.correct == 0 else (mean_second, mean_first)
        by_mean.append(pair_outcome(good_mean, bad_mean))
        if pair.group:
            group_outcomes[pair.group].append(by_mean[-1])
        records.append(PairScore(pair.pair_id, pair.group, pair.correct, first, second))
    return PairAccuracyResult(
        name=pair_set.name,
        accuracy_sum=sum(by_sum) / len(by_sum),
        accuracy_mean=sum(by_mean) / len(by_mean),
        num_pairs=len(by_sum),
        accuracy_mean_by_group={group: sum(v) / len(v) for group, v in sorted(group_outcomes.items())},
        pairs=records,
    )


def evaluate_spoken_lm(
    scorer: AudioLikelihoodScorer, pair_sets: Sequence[PairSet], config: PairScoringConfig | None = None
) -> dict[str, PairAccuracyResult]:
    """Score several pair sets; results keyed by set name."""
    return {pair_set.name: score_pairs(scorer, pair_set, config) for pair_set in pair_sets}

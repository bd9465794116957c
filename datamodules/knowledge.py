"""Facts read from offline knowledge sources, from which instruction answers are computed.

    WordNet 3.0 (Debian `wordnet-base`, `/usr/share/wordnet/data.{adj,noun}`): adjective antonym
        pairs, synonyms (the other words of a synset) and definitions (a synset's gloss);
    countryinfo (PyPI): each country's capital and continent (its `region`);
    periodictable (PyPI): each element's name, symbol and atomic number.

Only common single words are kept from WordNet (lowercase letters, English word frequency on the
Zipf scale >= `min_zipf`, from `wordfreq`): a tiny model is asked about "hot" and "cold", not
"abaxial". Every reader is deterministic (sorted output) so the instruction set built on it is too.

WordNet data lines read (see wndb(5)): `offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt
pointer... | gloss`; a pointer is `symbol offset pos source/target(hex: 2 + 2 digits)`, `!` is an
antonym between the source word of this synset and the target word of the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
_WORD = re.compile(r"[a-z]+")
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z .'-]*")


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its words (in WordNet order), gloss definition and antonym links."""

    offset: str
    pos: str
    words: tuple[str, ...]
    definition: str
    antonyms: tuple[tuple[int, str, int], ...]
    """(source word index, target synset offset, target word index), indices from 0."""


def _parse_data_line(line: str) -> Synset:
    body, _, gloss = line.partition(" | ")
    fields = body.split()
    offset, pos, num_words = fields[0], fields[2], int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].lower() for i in range(num_words))
    at = 4 + 2 * num_words
    num_pointers = int(fields[at])
    antonyms = []
    for i in range(num_pointers):
        symbol, target, _target_pos, source_target = fields[at + 1 + 4 * i : at + 5 + 4 * i]
        if symbol == "!":
            source_word, target_word = divmod(int(source_target, 16), 256)  # hex "SSTT": 1-based word numbers
            antonyms.append((source_word - 1, target, target_word - 1))
    definition = gloss.split(";")[0].strip()
    return Synset(offset, pos, words, definition, tuple(antonyms))


@lru_cache(maxsize=4)
def read_wordnet(part: str, wordnet_dir: Path = WORDNET_DIR) -> dict[str, Synset]:
    """The synsets of one WordNet data file (`adj`, `noun`, `verb`, `adv`) by offset."""
    path = wordnet_dir / f"data.{part}"
    if not path.is_file():
        raise FileNotFoundError(f"WordNet data file {path} not found: install it with `apt-get install wordnet-base`.")
    synsets = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            synset = _parse_data_line(line.rstrip("\n"))
            synsets[synset.offset] = synset
    return synsets


@lru_cache(maxsize=200_000)
def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def common_word(word: str, min_zipf: float) -> bool:
    """A lowercase single word at least as frequent as `min_zipf` (Zipf scale: 4 = once per 100k words)."""
    return bool(_WORD.fullmatch(word)) and _zipf(word) >= min_zipf


def antonym_pairs(min_zipf: float = 4.0, wordnet_dir: Path = WORDNET_DIR) -> list[tuple[str, list[str]]]:
    """(adjective, its WordNet antonyms) for common adjectives, sorted by adjective."""
    synsets = read_wordnet("adj", wordnet_dir)
    antonyms: dict[str, set[str]] = {}
    for synset in synsets.values():
        for source, target, target_index in synset.antonyms:
            word, other = synset.words[source], synsets[target].words[target_index]
            word, other = word.split("(")[0], other.split("(")[0]  # adjective markers like `big(a)`
            if common_word(word, min_zipf) and common_word(other, min_zipf) and word != other:
                antonyms.setdefault(word, set()).add(other)
    return [(word, sorted(others, key=lambda w: (-_zipf(w), w))) for word, others in sorted(antonyms.items())]


def synonym_sets(parts: tuple[str, ...] = ("adj",), min_zipf: float = 4.0, wordnet_dir: Path = WORDNET_DIR) -> list[
    tuple[str, list[str]]
]:
    """(word, its common synonyms, most frequent first) over the synsets of `parts`, sorted by word."""
    synonyms: dict[str, set[str]] = {}
    for part in parts:
        for synset in read_wordnet(part, wordnet_dir).values():
            words = [w.split("(")[0] for w in synset.words]
            words = [w for w in words if common_word(w, min_zipf)]
            for word in words:
                others = {w for w in words if w != word}
                if others:
                    synonyms.setdefault(word, set()).update(others)
    return [(word, sorted(others, key=lambda w: (-_zipf(w), w))) for word, others in sorted(synonyms.items())]


def definitions(
    parts: tuple[str, ...] = ("noun",), min_zipf: float = 4.5, max_words: int = 12, wordnet_dir: Path = WORDNET_DIR
) -> list[tuple[str, list[str]]]:
    """(a synset's definition, its common words, most frequent first): `max_words` or fewer words, unambiguous.

    A definition whose words are the answer to another definition too is dropped (two glosses, one
    answer are fine; one gloss must have one set of answers).
    """
    out: dict[str, set[str]] = {}
    for part in parts:
        for synset in read_wordnet(part, wordnet_dir).values():
            words = [w.split("(")[0] for w in synset.words]
            words = [w for w in words if common_word(w, min_zipf)]
            definition = synset.definition
            if not words or len(definition.split()) > max_words or not definition.isascii():
                continue
            if not definition[:1].isalpha():  # domain labels like "(British slang) ..."
                continue
            if any(w in definition.lower().split() for w in words):  # the gloss gives the answer away
                continue
            out.setdefault(definition, set()).update(words)
    return [(d, sorted(ws, key=lambda w: (-_zipf(w), w))) for d, ws in sorted(out.items())]


@dataclass(frozen=True)
class Country:
    """A country with its capital and continent (countryinfo's `region`)."""

    name: str
    capital: str
    continent: str


@lru_cache(maxsize=1)
def countries() -> tuple[Country, ...]:
    """Countries with a plain-ASCII name and capital and a known continent, sorted by name."""
    try:
        from countryinfo import all_countries
    except ImportError as e:
        raise ImportError("the country facts need `pip install countryinfo`") from e
    out = {}
    for info in all_countries():
        name, capital, continent = info.name(), info.capital(), info.region()
        if all(isinstance(v, str) and _PLAIN_NAME.fullmatch(v) for v in (name, capital, continent)):
            out[name] = Country(name, capital, continent)
    return tuple(out[name] for name in sorted(out))


@dataclass(frozen=True)
class Element:
    """A chemical element."""

    number: int
    symbol: str
    name: str


def elements(max_number: int = 103) -> list[Element]:
    """Elements 1..`max_number` (the named, long-known ones by default), by atomic number."""
    try:
        import periodictable
    except ImportError as e:
        raise ImportError("the element facts need `pip install periodictable`") from e
    return [Element(e.number, e.symbol, e.name) for e in periodictable.elements if 1 <= e.number <= max_number]

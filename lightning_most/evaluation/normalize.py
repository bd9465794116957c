"""English text normalisation applied to references and hypotheses before WER and answer matching.

``normalize_text`` does exactly these steps, in this order:

1. Unicode NFKC (full-width forms and ligatures become plain letters and digits).
2. Lowercase.
3. Apostrophes: ``’ ‘ ʼ ʹ ′ ´ ``` become ``'``. Hyphens and dashes ``‐ ‑ ‒ – — ― −`` become ``-``.
4. Symbols spoken as words: ``&`` becomes ``and``, ``%`` becomes ``percent``.
5. Numbers are written as words (the policy is words, because reference transcripts such as
   LibriSpeech spell numbers out): thousands separators between digits are dropped (``1,000``),
   ordinals ``1st 2nd 3rd 21st`` become ``first second third twenty first``, decimals ``3.05``
   become ``three point zero five``, integers become cardinals without "and" (``101`` -> ``one
   hundred one``, ``1990`` -> ``one thousand nine hundred ninety``; a year read as "nineteen
   ninety" therefore still counts as different words). A number too long for cardinal words
   (inflect's limit, about 10^36: a looping hypothesis can emit one) is read digit by digit.
6. Hyphens separate words: ``well-known`` -> ``well known``.
7. Apostrophes are kept inside a word (``don't``, ``o'clock``) and dropped at a word's edges
   (``'tis`` -> ``tis``, ``dogs'`` -> ``dogs``, quotes ``'yes'`` -> ``yes``).
8. Every other character that is not a letter, digit, apostrophe or whitespace becomes a space
   (punctuation, brackets, quotes, ``_``); letters outside ASCII (``café``) are kept.
9. Runs of whitespace collapse to one space; leading and trailing spaces are removed.

Contractions are not expanded (``don't`` stays ``don't``), and British/American spellings are not
unified.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import inflect

_APOSTROPHES = str.maketrans({c: "'" for c in "’‘ʼʹ′´`"})
_DASHES = str.maketrans({c: "-" for c in "‐‑‒–—―−"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_ORDINAL = re.compile(r"\b\d+(?:st|nd|rd|th)\b")
_DECIMAL = re.compile(r"\d+\.\d+")
_INTEGER = re.compile(r"\d+")
_NOT_WORD = re.compile(r"[^\w\s']|_")
_EDGE_APOSTROPHE = re.compile(r"(?<!\w)'+|'+(?!\w)")
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _inflect_engine() -> inflect.engine:
    return inflect.engine()


def number_to_words(number: str) -> str:
    """Spell one number token (``"21"``, ``"21st"``, ``"3.05"``) as space-separated words."""
    try:
        words = _inflect_engine().number_to_words(number, andword="")
    except inflect.NumOutOfRangeError:
        words = _inflect_engine().number_to_words(number, group=1, andword="")  # "123" -> "one, two, three"
    return " ".join(words.replace(",", " ").replace("-", " ").split())


def _spell_match(match: re.Match[str]) -> str:
    return f" {number_to_words(match.group(0))} "


def _spell_numbers(text: str) -> str:
    while _THOUSANDS.search(text):
        text = _THOUSANDS.sub("", text)
    text = _ORDINAL.sub(_spell_match, text)
    text = _DECIMAL.sub(_spell_match, text)
    return _INTEGER.sub(_spell_match, text)


def normalize_text(text: str) -> str:
    """Normalise English text for WER and answer matching (steps in the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.translate(_APOSTROPHES).translate(_DASHES)
    text = text.replace("&", " and ").replace("%", " percent ")
    text = _spell_numbers(text)
    text = text.replace("-", " ")
    text = _NOT_WORD.sub(" ", text)
    text = _EDGE_APOSTROPHE.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip()

"""Real English sentences from Debian's `fortunes` packages, cleaned for speaking and for text LM.

A fortune file holds quotations separated by lines holding a single `%`. We drop attribution lines
(`-- Mark Twain`), join the rest, split it into sentences and keep the ones a synthesizer reads
exactly as written: plain ASCII letters and light punctuation, no digits (a TTS voice says "1984" in
words the transcript does not have), no acronyms, no abbreviations cut in half by the splitter.
The offensive categories (`off/`, Debian's `fortunes-off`) are never read. The embedded corpus
(`datamodules.embedded`) and the spoken-LM story pairs (`evaluation.spoken_lm_miniature`) read them here.
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning_most.text_corpus import EXCLUDED_CATEGORIES, FORTUNES_DIR, fortune_files, read_fortunes

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SPEAKABLE = re.compile(r"[A-Z][A-Za-z ,;'-]*[a-z][.!?]")
_ACRONYM = re.compile(r"[A-Z][A-Za-z]*[A-Z]")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "gen", "col", "lt", "rev"})


def split_sentences(fortune: str) -> list[str]:
    """Split a quotation at sentence ends (`.`, `!`, `?` followed by a capital), quotes removed."""
    fortune = fortune.replace('"', "").replace("`", "")
    return [s.strip() for s in _SENTENCE_END.split(fortune) if s.strip()]


def is_speakable(sentence: str, min_words: int, max_words: int) -> bool:
    """True for a plain-ASCII sentence of `min_words`..`max_words` words that a voice reads as written."""
    if not sentence.isascii() or not _SPEAKABLE.fullmatch(sentence):
        return False
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if any(_ACRONYM.fullmatch(w.strip(",;.!?'-")) for w in words):
        return False
    if "  " in sentence or "--" in sentence or "''" in sentence:
        return False
    return words[-1].rstrip(".!?").lower() not in _ABBREVIATIONS


def fortune_sentences(
    root: Path = FORTUNES_DIR,
    min_words: int = 3,
    max_words: int = 20,
    exclude: tuple[str, ...] = EXCLUDED_CATEGORIES,
) -> list[str]:
    """Unique speakable sentences of every fortune category, in file order (case-insensitive dedup)."""
    seen: set[str] = set()
    sentences = []
    for path in fortune_files(root, exclude):
        for fortune in read_fortunes(path):
            for sentence in split_sentences(fortune):
                key = sentence.lower()
                if key not in seen and is_speakable(sentence, min_words, max_words):
                    seen.add(key)
                    sentences.append(sentence)
    return sentences

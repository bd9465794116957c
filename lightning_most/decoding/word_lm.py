"""A word n-gram LM and its lexicon, fused into byte-level ASR beam search (shallow fusion).

A decoder trained from scratch on a few thousand sentences hears words better than it spells them
("colige", "to gether"). Shallow fusion adds, at each decoding step, `weight * log P_lm` of the word
being written, the classic remedy of ESPnet's word LM and of lexicon decoders (flashlight, k2 HLG):

- `WordNgramLM`: interpolated absolute discounting (Ney et al., 1994) over words of order N, its
  unigram mixed with an optional prior over a larger vocabulary (the `wordfreq` English frequencies,
  so that a word the LM text never saw is still a word);
- `LexiconTrie`: the LM's words letter by letter; each node keeps the best unigram log-prob of the
  words below it (the "smeared" look-ahead), so a partial word is scored before it is finished;
- `WordLMFusion`: per beam row, the completed words' context and the trie node of the word in
  progress; `scores()` gives every byte's score delta, `reorder` / `advance` follow the beam.

Words are what `evaluation.normalize.normalize_text` makes of a text (lowercase; letters, digits and
inner apostrophes), so the LM and the WER agree on what a word is. While decoding, a byte is part of
a word if it is an ASCII letter, digit or apostrophe (uppercase is looked up lowercased); any other
byte (space, punctuation, hyphen) or <eos> ends the word in progress. Per byte of a word the score
moves along the trie's look-ahead; at its end it becomes the word's n-gram log-prob plus
`word_bonus`; a word that leaves the lexicon pays `oov_log_prob` once.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lightning_most.evaluation.normalize import normalize_text

NEG_INF = float("-inf")
SENTENCE_END = "</s>"
_PLAIN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")  # what normalize_text leaves as it is


@dataclass
class WordLMConfig:
    """What a word LM is counted on and how strongly it is fused into ASR beam search."""

    text_files: list[str] = field(default_factory=list)
    """Sentences to count: `.txt` (one per line), or `.jsonl` / `.jsonl.gz` with a "text" field per line
    or lhotse cuts (their supervisions' texts). Empty = the training text of the data module fit with
    (its `word_lm_text_files()`: transcripts and text-LM sentences), written here when fitting starts.
    Never the dev or test transcripts."""
    order: int = 2
    """N of the n-gram: 1 = unigram, 2 = bigram, ..."""
    discount: float = 0.7
    """Absolute discount D in (0, 1) taken from every seen n-gram count and given to the lower order."""
    wordfreq_words: int = 50000
    """The N most frequent English words of `wordfreq` join the lexicon; 0 = only the text's words."""
    wordfreq_weight: float = 0.5
    """Share of the `wordfreq` frequencies in the unigram (the rest: the text's own counts)."""
    weight: float = 0.3
    """Fusion weight: the LM's log-prob is added times this to the joint CTC / attention score."""
    word_bonus: float = 1.0
    """Added at each completed word (counters the LM's preference for fewer, longer words)."""
    oov_log_prob: float = -12.0
    """LM log-prob of a word outside the lexicon (natural log)."""

    def __post_init__(self) -> None:
        if self.order < 1:
            raise ValueError(f"asr_decoding.word_lm.order must be >= 1, got {self.order}")
        if not 0 < self.discount < 1:
            raise ValueError(f"asr_decoding.word_lm.discount must lie in (0, 1), got {self.discount}")
        if not 0 <= self.wordfreq_weight <= 1:
            raise ValueError(f"asr_decoding.word_lm.wordfreq_weight must lie in [0, 1], got {self.wordfreq_weight}")
        if self.wordfreq_words < 0:
            raise ValueError(f"asr_decoding.word_lm.wordfreq_words must be >= 0, got {self.wordfreq_words}")
        if self.weight < 0:
            raise ValueError(f"asr_decoding.word_lm.weight must be >= 0, got {self.weight}")
        if self.wordfreq_weight > 0 and self.wordfreq_words == 0:
            raise ValueError("asr_decoding.word_lm.wordfreq_weight > 0 needs wordfreq_words > 0 (or set wordfreq_weight 0)")


def read_sentences(path: str | Path) -> list[str]:
    """Sentences of one text file: a line each (`.txt`); in `.jsonl` / `.jsonl.gz`, each line's "text" field,
    or the texts of its "supervisions" (a lhotse cut manifest line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"asr_decoding.word_lm.text_files: {path} does not exist: build the corpus first, or fix the path "
            "(or asr_decoding.word_lm: null)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    is_jsonl = path.name.endswith((".jsonl", ".jsonl.gz"))
    sentences = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not is_jsonl:
                sentences.append(line.strip())
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON line ({error.msg})") from error
            texts = _record_texts(record)
            if texts is None:
                raise ValueError(
                    f"{path}:{number} has neither a string field 'text' nor 'supervisions' with texts: each line needs one"
                )
            sentences += texts
    return sentences


def _record_texts(record: object) -> list[str] | None:
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("text"), str):
        return [record["text"]]
    supervisions = record.get("supervisions")
    if isinstance(supervisions, list) and all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in supervisions):
        return [s["text"] for s in supervisions]
    return None


def wordfreq_prior(num_words: int) -> dict[str, float]:
    """The `num_words` most frequent English words of `wordfreq`, normalised as words are, frequencies summing to 1."""
    from wordfreq import get_frequency_dict, top_n_list

    frequency = get_frequency_dict("en")
    freqs: dict[str, float] = {}
    for token in top_n_list("en", num_words):
        word = token if _PLAIN_WORD.fullmatch(token) else normalize_text(token)
        if word and " " not in word:
            freqs[word] = freqs.get(word, 0.0) + frequency.get(token, 0.0)
    total = sum(freqs.values())
    return {w: f / total for w, f in freqs.items() if f > 0}


class WordNgramLM:
    """Interpolated absolute-discounting word n-gram LM over normalised words, with </s>.

        P(w | h) = max(c(h w) - D, 0) / c(h) + D * n(h) / c(h) * P(w | h'),   h' = h without its first word
        P(w)     = (1 - b) c(w) / N + b prior(w)

    where c counts the text's n-grams (sentences start with the empty context), n(h) is the number of
    distinct words seen after h, and an unseen h backs off to P(w | h') entirely.

    Args:
        sentences: the training text, a word list per sentence.
        order: N.
        discount: D.
        prior: a unigram distribution over (possibly more) words, or None.
        prior_weight: b.
    """

    def __init__(
        self,
        sentences: Iterable[Sequence[str]],
        order: int = 2,
        discount: float = 0.7,
        prior: dict[str, float] | None = None,
        prior_weight: float = 0.0,
    ) -> None:
        self.order, self.discount = order, discount
        prior = prior or {}
        if prior_weight > 0 and not prior:
            raise ValueError("prior_weight > 0 needs a prior")
        unigram: Counter[str] = Counter()
        # counts[h] = Counter of the words after context h (a tuple of 1..order-1 words)
        counts: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for words in sentences:
            tokens = list(words) + [SENTENCE_END]
            unigram.update(tokens)
            for i, word in enumerate(tokens):
                for n in range(1, order):
                    if i - n < 0:
                        break
                    counts[tuple(tokens[i - n : i])][word] += 1
        if not unigram or set(unigram) == {SENTENCE_END}:
            raise ValueError("the word LM's text holds no words: check asr_decoding.word_lm.text_files")
        self.words: list[str] = sorted(set(unigram) | set(prior))
        self.index = {w: i for i, w in enumerate(self.words)}
        total = sum(unigram.values())
        weight = prior_weight if prior else 0.0
        self.unigram_log_probs: dict[str, float] = {}
        for w in self.words:
            p = (1 - weight) * unigram[w] / total + weight * prior.get(w, 0.0)
            self.unigram_log_probs[w] = math.log(p) if p > 0 else NEG_INF
        self._counts = {h: (sum(c.values()), len(c), c) for h, c in counts.items()}
        self._cache: dict[tuple[tuple[str, ...], str], float] = {}

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def log_prob(self, context: Sequence[str], word: str) -> float:
        """log P(word | the last order - 1 words of context); -inf for a word outside the vocabulary."""
        if word not in self.index:
            return NEG_INF
        history = tuple(context[len(context) - self.order + 1 :]) if self.order > 1 else ()
        key = (history, word)
        if key not in self._cache:
            self._cache[key] = math.log(self._prob(history, word))
        return self._cache[key]

    def _prob(self, history: tuple[str, ...], word: str) -> float:
        if not history:
            return math.exp(self.unigram_log_probs[word])
        lower = self._prob(history[1:], word)
        seen = self._counts.get(history)
        if seen is None:
            return lower
        total, distinct, followers = seen
        return max(followers.get(word, 0) - self.discount, 0) / total + self.discount * distinct / total * lower

    def sentence_log_prob(self, words: Sequence[str]) -> float:
        """log P of a whole sentence, </s> included."""
        tokens, score = list(words) + [SENTENCE_END], 0.0
        for i, word in enumerate(tokens):
            score += self.log_prob(tokens[:i], word)
        return score

    @classmethod
    def from_config(cls, config: WordLMConfig) -> WordNgramLM:
        """Count the LM on `config.text_files` (normalised words), with the `wordfreq` prior if configured."""
        if not config.text_files:
            raise ValueError("asr_decoding.word_lm.text_files is empty: list the text files the word LM is counted on")
        sentences = [normalize_text(s).split() for path in config.text_files for s in read_sentences(path)]
        prior = wordfreq_prior(config.wordfreq_words) if config.wordfreq_words > 0 else None
        return cls(sentences, config.order, config.discount, prior, config.wordfreq_weight if prior else 0.0)


def counted_word_lm(config: WordLMConfig) -> tuple[WordNgramLM, LexiconTrie]:
    """The word LM and lexicon of `config`, counted once per process (again only if what it is counted from changes)."""
    return _count(tuple(config.text_files), config.order, config.discount, config.wordfreq_words, config.wordfreq_weight)


@functools.lru_cache(maxsize=2)
def _count(
    text_files: tuple[str, ...], order: int, discount: float, wordfreq_words: int, wordfreq_weight: float
) -> tuple[WordNgramLM, LexiconTrie]:
    config = WordLMConfig(list(text_files), order, discount, wordfreq_words, wordfreq_weight)
    start = time.perf_counter()
    # on stderr, shown whether or not logging is configured: counting a large text takes minutes (a missing
    # file is left to from_config's one-line error, with no progress line before it)
    if all(os.path.isfile(path) for path in text_files):
        print(f"word LM: counting {order}-grams on {len(text_files)} text file(s): {', '.join(text_files[:3])}"
              + (" ..." if len(text_files) > 3 else ""), file=sys.stderr, flush=True)
    lm = WordNgramLM.from_config(config)
    lexicon = LexiconTrie(lm)
    print(f"word LM: {len(lm.words)} words counted in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return lm, lexicon


class LexiconTrie:
    """The LM's words (not </s>) letter by letter; node 0 is the root (no letter yet).

    `children[n]` maps a character to a node, `word[n]` is the word ending at n (or None), and
    `look_ahead[n]` the best unigram log-prob of the words at or below n (0 at the root).
    """

    ROOT = 0

    def __init__(self, lm: WordNgramLM) -> None:
        self.children: list[dict[str, int]] = [{}]
        self.word: list[str | None] = [None]
        self.look_ahead: list[float] = [NEG_INF]
        for w in lm.words:
            if w == SENTENCE_END or lm.unigram_log_probs[w] == NEG_INF:
                continue
            node = self.ROOT
            for ch in w:
                nxt = self.children[node].get(ch)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][ch] = nxt
                    self.children.append({})
                    self.word.append(None)
                    self.look_ahead.append(NEG_INF)
                node = nxt
            self.word[node] = w
            self.look_ahead[node] = max(self.look_ahead[node], lm.unigram_log_probs[w])
        # Children are created after their parents: one backward pass carries each subtree's best up.
        parent = [0] * len(self.children)
        for node, kids in enumerate(self.children):
            for child in kids.values():
                parent[child] = node
        for node in range(len(self.children) - 1, 0, -1):
            parent_node = parent[node]
            self.look_ahead[parent_node] = max(self.look_ahead[parent_node], self.look_ahead[node])
        self.look_ahead[self.ROOT] = 0.0

    def __len__(self) -> int:
        return len(self.children)


OOV = -1  # trie state of a word in progress that has left the lexicon


def byte_word_chars() -> dict[int, str]:
    """Byte ids that continue a word, and the lowercase character each is looked up as in the trie."""
    chars = {}
    for i in range(128):
        c = chr(i)
        if c.isalnum() or c == "'":
            chars[i] = c.lower()
    for i in range(128, 256):  # parts of non-ASCII letters: in a word, never in the (normalised ASCII) trie
        chars[i] = "\x00"
    return chars


class WordLMFusion:
    """Word-LM score deltas of every next byte, for each row of a byte-level beam search.

    Args:
        lm: the word LM.
        trie: its lexicon.
        config: fusion weight, word bonus and OOV log-prob.
        num_rows: rows of the beam (B * K).
        vocab_size: width V of the decoder's logits; ids 0..255 are bytes.
        eos: the id that ends a transcript.
        device: where the score tensors are made (the decoder's device).
    """

    def __init__(
        self, lm: WordNgramLM, trie: LexiconTrie, config: WordLMConfig, num_rows: int, vocab_size: int, eos: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.lm, self.trie, self.config, self.eos, self.device = lm, trie, config, eos, device
        self.vocab_size = vocab_size
        self.word_chars = byte_word_chars()
        self._word_byte = torch.zeros(vocab_size, dtype=torch.float64)  # 1 at ids that continue a word
        self._word_byte[list(self.word_chars)] = 1.0
        self._ids_of_char: dict[str, list[int]] = {}  # trie character -> the byte ids looked up as it
        for i, ch in self.word_chars.items():
            self._ids_of_char.setdefault(ch, []).append(i)
        self.delimiters = torch.zeros(vocab_size, dtype=torch.bool)
        self.delimiters[[i for i in range(128) if i not in self.word_chars]] = True
        self.delimiters = self.delimiters.to(device)
        self.context: list[tuple[str, ...]] = [() for _ in range(num_rows)]  # completed words (last order-1)
        self.node: list[int] = [LexiconTrie.ROOT] * num_rows
        self._letters: dict[int, Tensor] = {}  # trie node -> (V,) LM delta of each word byte from it
        self._ends: dict[tuple[int, tuple[str, ...]], tuple[float, float]] = {}  # (node, context) -> `_end_scores`

    # ---- per-node and per-row pieces ---------------------------------------------------------
    def _letter_deltas(self, node: int) -> Tensor:
        """(V,) LM log-prob delta of extending the word at `node` by each word byte (0 elsewhere)."""
        if node not in self._letters:
            if node == OOV:
                delta = torch.zeros(self.vocab_size, dtype=torch.float64)
            else:
                here = self.trie.look_ahead[node]
                delta = self._word_byte * (self.config.oov_log_prob - here)  # leaving the lexicon
                for ch, child in self.trie.children[node].items():
                    ids = self._ids_of_char.get(ch)  # None for letters beyond ASCII (café): bytes cannot reach them
                    if ids is not None:
                        delta[ids] = self.trie.look_ahead[child] - here
            self._letters[node] = delta.to(self.device)
        return self._letters[node]

    def _completed(self, row: int) -> tuple[float, str | None]:
        """(LM delta, word) of ending the row's word in progress now; (0, None) with no word in progress."""
        node = self.node[row]
        if node == LexiconTrie.ROOT:
            return 0.0, None
        if node == OOV:  # its OOV log-prob was paid when it left the lexicon
            return 0.0, None
        word = self.trie.word[node]
        here = self.trie.look_ahead[node]
        if word is None:  # a prefix of words, not a word
            return self.config.oov_log_prob - here, None
        return self.lm.log_prob(self.context[row], word) - here, word

    def _history(self, row: int, word: str | None) -> tuple[str, ...]:
        """The row's context once its word in progress (`word`, None if outside the lexicon) is complete."""
        if self.node[row] == LexiconTrie.ROOT:
            return self.context[row]
        keep = self.lm.order - 1
        if word is None or keep == 0:  # an OOV word resets the context
            return ()
        return (self.context[row] + (word,))[-keep:]

    # ---- beam interface ----------------------------------------------------------------------
    def _end_scores(self, row: int) -> tuple[float, float]:
        """The row's scores of a delimiter and of <eos> next: weight * LM delta of ending its word (+ word_bonus),
        and for <eos> also weight * log P(</s>)."""
        key = (self.node[row], self.context[row])
        if key not in self._ends:
            w = self.config.weight
            end, word = self._completed(row)
            end_score = w * end + (self.config.word_bonus if self.node[row] != LexiconTrie.ROOT else 0.0)
            self._ends[key] = end_score, end_score + w * self.lm.log_prob(self._history(row, word), SENTENCE_END)
        return self._ends[key]

    def scores(self) -> Tensor:
        """(rows, V) float64: weight * LM delta (+ word_bonus at word ends) of each next id."""
        delta = self.config.weight * torch.stack([self._letter_deltas(node) for node in self.node])  # (rows, V)
        ends = torch.tensor([self._end_scores(row) for row in range(len(self.node))], dtype=torch.float64,
                            device=delta.device)  # (rows, 2): delimiter, <eos>
        delta[:, self.delimiters] = ends[:, :1]
        delta[:, self.eos] = ends[:, 1]
        return delta

    def reorder(self, index: Tensor) -> None:
        """Row i continues row index[i]'s prefix."""
        index = index.tolist()
        self.context = [self.context[i] for i in index]
        self.node = [self.node[i] for i in index]

    def advance(self, next_id: Tensor) -> None:
        """Extend each row's text by its chosen id."""
        for row, token in enumerate(next_id.tolist()):
            ch = self.word_chars.get(token)
            node = self.node[row]
            if ch is not None:
                self.node[row] = OOV if node == OOV else self.trie.children[node].get(ch, OOV)
            elif node != LexiconTrie.ROOT:  # a delimiter (or <eos>) completes the word
                _, word = self._completed(row)
                self.context[row] = self._history(row, word)
                self.node[row] = LexiconTrie.ROOT

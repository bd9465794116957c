"""Word LM fusion: the n-gram LM is a distribution, the lexicon's look-ahead is the best word below each
node, the per-byte fusion scores of a text add up to its LM log-prob, and beam search and the stage
module decode with it."""

from __future__ import annotations

import gzip
import itertools
import json
import math

import pytest
import torch

from lightning_most.decoding import ASRDecodingConfig
from lightning_most.decoding.beam_search import beam_search
from lightning_most.decoding.word_lm import (
    OOV,
    SENTENCE_END,
    LexiconTrie,
    WordLMConfig,
    WordLMFusion,
    WordNgramLM,
    counted_word_lm,
    read_sentences,
)
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.stages import CTCConfig, Stage1Module
from lightning_most.tokenizer import ByteTokenizer
from tests.test_beam_search import ENCODER, SPECIALS, _allowed, _joint_score, _model, _prompt, _rescorer, asr_batch

TOK = ByteTokenizer()
TEXT = ["the cat sat", "the cat ran", "a dog sat", "the dog"]


def _lm(order: int = 2, prior: dict | None = None, prior_weight: float = 0.0) -> WordNgramLM:
    return WordNgramLM([s.split() for s in TEXT], order=order, discount=0.5, prior=prior, prior_weight=prior_weight)


def _fusion(lm: WordNgramLM, rows: int = 1, **config) -> WordLMFusion:
    cfg = WordLMConfig(text_files=["unused"], wordfreq_words=0, wordfreq_weight=0.0, **config)
    return WordLMFusion(lm, LexiconTrie(lm), cfg, rows, vocab_size=300, eos=SPECIALS.eos)


def _fused_total(fusion: WordLMFusion, text: str, end: bool = True) -> float:
    total = 0.0
    for token in TOK.encode(text) + ([SPECIALS.eos] if end else []):
        total += float(fusion.scores()[0, token])
        fusion.advance(torch.tensor([token]))
    return total


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("context", [(), ("the",), ("the", "cat"), ("unseen",), ("dog", "sat")])
def test_the_ngram_lm_is_a_distribution_over_its_words_and_the_sentence_end(order, context) -> None:
    lm = _lm(order, prior={"the": 0.5, "zebra": 0.3, "cat": 0.2}, prior_weight=0.4)
    total = sum(math.exp(lm.log_prob(context, w)) for w in lm.words)
    assert total == pytest.approx(1.0, abs=1e-9)
    assert "zebra" in lm and lm.log_prob(context, "zebra") > -math.inf  # the prior's words are words
    assert lm.log_prob(context, "unicorn") == -math.inf


def test_bigram_probabilities_are_interpolated_absolute_discounting() -> None:
    lm = _lm(order=2)
    # Unigram: 12 tokens (9 words + 4 </s>... counted): the 3 x "the", ...; after "the": cat x 2, dog x 1.
    total = sum(len(s.split()) + 1 for s in TEXT)
    p_cat = 2 / total
    expected = (2 - 0.5) / 3 + 0.5 * 2 / 3 * p_cat
    assert math.exp(lm.log_prob(("the",), "cat")) == pytest.approx(expected)
    assert math.exp(lm.log_prob(("sat",), "cat")) == pytest.approx(0.5 * 1 / 2 * p_cat)  # only </s> followed "sat"
    assert lm.log_prob(("never",), "cat") == pytest.approx(math.log(p_cat))  # an unseen context backs off
    assert lm.log_prob(("a", "the"), "cat") == lm.log_prob(("the",), "cat")  # only the last word counts


def test_the_look_ahead_of_a_node_is_its_best_word() -> None:
    lm = WordNgramLM([["car", "cart", "cat", "cat", "dog"]], order=1, discount=0.5)
    trie = LexiconTrie(lm)
    node = trie.ROOT
    for ch in "ca":
        node = trie.children[node][ch]
    assert trie.word[node] is None
    assert trie.look_ahead[node] == pytest.approx(lm.unigram_log_probs["cat"])  # cat (2) beats car, cart (1)
    node_car = trie.children[node]["r"]
    assert trie.word[node_car] == "car"
    assert trie.look_ahead[node_car] == pytest.approx(lm.unigram_log_probs["car"])  # car and cart tie
    assert trie.look_ahead[trie.ROOT] == 0.0
    assert SENTENCE_END not in {w for w in trie.word if w}


@pytest.mark.parametrize("text", ["The cat sat", "the dog, the cat ran!", "A dog", "the"])
def test_fused_scores_of_a_text_add_up_to_its_weighted_lm_log_prob_and_word_bonuses(text) -> None:
    lm = _lm(order=2)
    fusion = _fusion(lm, weight=0.7, word_bonus=1.5)
    words = normalize_text(text).split()
    expected = 0.7 * lm.sentence_log_prob(words) + 1.5 * len(words)
    assert _fused_total(fusion, text) == pytest.approx(expected)


def test_a_word_outside_the_lexicon_costs_its_oov_log_prob_once_and_resets_the_context() -> None:
    lm = _lm(order=2)
    fusion = _fusion(lm, weight=1.0, word_bonus=0.0, oov_log_prob=-20.0)
    got = _fused_total(fusion, "the caat sat")
    expected = lm.log_prob((), "the") - 20.0 + lm.log_prob((), "sat") + lm.log_prob(("sat",), SENTENCE_END)
    assert got == pytest.approx(expected)
    fusion = _fusion(lm, weight=1.0, word_bonus=0.0, oov_log_prob=-20.0)
    _fused_total(fusion, "th", end=False)
    assert fusion.node[0] not in (OOV, LexiconTrie.ROOT)
    assert float(fusion.scores()[0, ord(" ")]) == pytest.approx(-20.0 - fusion.trie.look_ahead[fusion.node[0]])


def test_letters_beyond_ascii_in_the_lexicon_are_out_of_reach_of_bytes() -> None:
    lm = WordNgramLM([["café", "cafe", "cab"]], order=1, discount=0.5)
    fusion = _fusion(lm, weight=1.0, word_bonus=0.0, oov_log_prob=-20.0)
    assert _fused_total(fusion, "cafe") == pytest.approx(lm.sentence_log_prob(["cafe"]))
    fusion = _fusion(lm, weight=1.0, word_bonus=0.0, oov_log_prob=-20.0)
    expected = -20.0 + lm.log_prob((), SENTENCE_END)  # the UTF-8 bytes of "é" leave the lexicon
    assert _fused_total(fusion, "café") == pytest.approx(expected)


def test_reorder_moves_each_rows_context_and_word_in_progress() -> None:
    lm = _lm(order=2)
    fusion = _fusion(lm, rows=2, weight=1.0)
    for a, b in zip("the c", "a do"):
        fusion.advance(torch.tensor([ord(a), ord(b)]))
    before = fusion.scores()
    fusion.reorder(torch.tensor([1, 1]))
    after = fusion.scores()
    assert torch.equal(after[0], before[1]) and torch.equal(after[1], before[1])
    assert fusion.context == [("a",), ("a",)]


@torch.no_grad()
def test_a_wide_beam_finds_the_best_joint_plus_lm_score_of_all_transcripts() -> None:
    model = _model()
    prompt = _prompt(model.config)
    letters = (ord("a"), ord("b"), ord(" "))
    lm = WordNgramLM([["ab", "b"], ["b", "ba"], ["ab"]], order=1, discount=0.5)
    steps, beam = 3, 27
    candidates = [(list(ids), len(ids) < steps) for n in range(steps + 1) for ids in itertools.product(letters, repeat=n)]

    def fusion(rows: int) -> WordLMFusion:  # unigram, no bonus, a harsh OOV: every step's score <= 0
        cfg = WordLMConfig(text_files=["unused"], order=1, wordfreq_words=0, wordfreq_weight=0.0, weight=2.0,
                           word_bonus=0.0, oov_log_prob=-30.0)
        return WordLMFusion(lm, LexiconTrie(lm), cfg, rows, model.config.vocab_size, SPECIALS.eos)

    got = beam_search(model, prompt, 8, beam, _allowed(model.config, letters), SPECIALS.eos,
                      max_lengths=torch.tensor([steps, steps]), rescorer=_rescorer(model, prompt, beam),
                      word_lm=fusion(2 * beam))
    for row in range(2):
        scores = {}
        for ids, ended in candidates:
            f = fusion(1)
            lm_score = 0.0
            for token in ids + ([SPECIALS.eos] if ended else []):
                lm_score += float(f.scores()[0, token])
                f.advance(torch.tensor([token]))
            scores[tuple(ids)] = _joint_score(model, prompt, row, ids, ended) + lm_score
        best = max(scores, key=scores.get)
        assert tuple(got[row]) == best
        text = TOK.decode(list(best))
        complete = text if len(best) < steps else text.rpartition(" ")[0]  # a cut transcript may end mid-word
        assert all(w in lm for w in normalize_text(complete).split()), text  # the LM keeps words in its lexicon


def test_read_sentences_reads_text_and_jsonl_and_names_bad_files(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("One line.\n\nTwo lines.\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "x", "text": "Hello there."}) + "\n")
    with gzip.open(tmp_path / "cuts.jsonl.gz", "wt") as f:  # a lhotse cut line: its supervisions' texts
        f.write(json.dumps({"id": "c", "supervisions": [{"id": "s1", "text": "First."}, {"id": "s2", "text": "Then."}]}))
    assert read_sentences(tmp_path / "cuts.jsonl.gz") == ["First.", "Then."]
    assert read_sentences(tmp_path / "a.txt") == ["One line.", "Two lines."]
    assert read_sentences(tmp_path / "b.jsonl.gz") == ["Hello there."]
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 has neither a string field 'text' nor 'supervisions'"):
        read_sentences(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="asr_decoding.word_lm.text_files: .*missing.txt"):
        read_sentences(tmp_path / "missing.txt")
    (tmp_path / "punctuation.txt").write_text("...\n!\n")
    with pytest.raises(ValueError, match="holds no words"):
        WordNgramLM.from_config(WordLMConfig(text_files=[str(tmp_path / "punctuation.txt")], wordfreq_words=0,
                                             wordfreq_weight=0.0))
    with pytest.raises(ValueError, match="discount"):
        WordLMConfig(discount=1.5)
    with pytest.raises(ValueError, match="wordfreq_words > 0"):
        WordLMConfig(wordfreq_words=0, wordfreq_weight=0.5)


def test_the_wordfreq_prior_adds_english_words_to_a_small_text(tmp_path) -> None:
    (tmp_path / "t.txt").write_text("the cat sat\n")
    lm = WordNgramLM.from_config(WordLMConfig(text_files=[str(tmp_path / "t.txt")], wordfreq_words=2000,
                                              wordfreq_weight=0.5))
    assert "house" in lm and "cat" in lm
    assert lm.log_prob(("the",), "cat") > lm.log_prob(("the",), "house")  # the text's own bigram


def test_stage_module_transcribes_with_the_word_lm_inside_its_lexicon(tmp_path) -> None:
    (tmp_path / "lm.txt").write_text("hello world\nhello there\n")
    config = WordLMConfig(text_files=[str(tmp_path / "lm.txt")], wordfreq_words=0, wordfreq_weight=0.0,
                          weight=20.0, oov_log_prob=-200.0)
    module = Stage1Module(backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER}, ctc=CTCConfig(weight=1.0),
                          asr_decoding=ASRDecodingConfig(max_new_tokens=30, ctc_weight=0.5, beam_size=2, word_lm=config))
    batch = asr_batch(module)  # builds the backbone
    hyps = module.decoder.transcribe(batch)
    assert len(hyps) == 2
    for hyp in hyps:
        assert all(w in {"hello", "world", "there"} for w in normalize_text(hyp).split()), hyp
    with pytest.raises(ValueError, match="tokenizer='byte'"):
        Stage1Module(tokenizer=str(tmp_path), asr_decoding=ASRDecodingConfig(word_lm=config))


def test_a_word_lm_without_text_and_without_a_data_module_is_refused_at_setup() -> None:
    module = Stage1Module(asr_decoding=ASRDecodingConfig(word_lm=WordLMConfig()))
    with pytest.raises(ValueError, match="asr_decoding.word_lm.text_files is empty and there is no data module"):
        module.setup("fit")


def test_counting_the_word_lm_says_what_it_counts_and_how_long_it_took(tmp_path, capsys) -> None:
    text = tmp_path / "lm_text.txt"
    text.write_text("the cat sat\nthe dog ran\n")
    counted_word_lm(WordLMConfig(text_files=[str(text)], wordfreq_words=0, wordfreq_weight=0.0))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"word LM: counting 2-grams on 1 text file(s): {text}"
    assert lines[1].startswith("word LM: 6 words counted in ")  # the, cat, sat, dog, ran and </s>

"""The embedded corpus: splits, held-out speakers and sentences, audio format, units, determinism."""

from __future__ import annotations

import gzip
import json

import pytest
import soundfile as sf
from lhotse import CutSet

from datamodules.embedded import EmbeddedCorpusConfig, plan_utterances, prepare_embedded_corpus
from lightning_most.fortunes import fortune_sentences, is_speakable, split_sentences
from tests.datamodules.conftest import TINY


def _texts(path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["text"] for line in f]


def test_splits_hold_out_speakers_and_sentences(tiny_corpus):
    cuts = {split: CutSet.from_file(path).to_eager() for split, path in tiny_corpus.cuts.items()}
    assert {s: len(c) for s, c in cuts.items()} == {"train": 24, "dev": 4, "test": 4}
    speakers = {s: {c.supervisions[0].speaker for c in cs} for s, cs in cuts.items()}
    sentences = {s: {c.supervisions[0].text for c in cs} for s, cs in cuts.items()}
    assert speakers["dev"] <= speakers["train"]
    assert not speakers["test"] & speakers["train"]
    text = {s: set(_texts(p)) for s, p in tiny_corpus.text.items()}
    pools = [sentences["train"], sentences["dev"], sentences["test"], text["train"], text["dev"]]
    assert sum(len(p) for p in pools) == len(set().union(*pools)) == 24 + 4 + 4 + 40 + 8


def test_audio_is_16k_mono_16bit_and_units_follow_the_audio(tiny_corpus):
    for cut in CutSet.from_file(tiny_corpus.cuts["dev"]):
        info = sf.info(cut.recording.sources[0].source)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        units = cut.load_units()
        assert abs(len(units) - cut.duration * 50) <= 2
        assert 0 <= units.min() and units.max() < 16
    assert tiny_corpus.unit_quantizer.is_file()


def test_rebuild_with_same_config_is_reused(tiny_corpus):
    before = tiny_corpus.summary.stat().st_mtime_ns
    prepare_embedded_corpus(tiny_corpus.root, TINY)
    assert tiny_corpus.summary.stat().st_mtime_ns == before


def test_plan_is_deterministic_given_seed():
    sentences = fortune_sentences()
    first, text_first = plan_utterances(TINY, sentences)
    again, text_again = plan_utterances(TINY, sentences)
    other, _ = plan_utterances(EmbeddedCorpusConfig(**{**TINY.__dict__, "seed": 1}), sentences)
    assert first == again and text_first == text_again
    assert [u.text for u in first] != [u.text for u in other]


def test_sentences_are_real_speakable_english():
    assert split_sentences('He said "Hello there." Then he left!') == ["He said Hello there.", "Then he left!"]
    assert is_speakable("A journey begins with a single step.", 3, 20)
    for bad in (
        "It was 1984 again.",
        "Ask the IBM guys.",
        "Too short.",
        "Him: You are late.",
        "I met Mr.",
        "Caf\u00e9 au lait is nice.",
    ):
        assert not is_speakable(bad, 3, 20), bad


def test_too_many_sentences_requested_is_a_clear_error():
    config = EmbeddedCorpusConfig(**{**TINY.__dict__, "num_text_train": 10**6})
    with pytest.raises(ValueError, match="lower the num_"):
        plan_utterances(config, fortune_sentences())

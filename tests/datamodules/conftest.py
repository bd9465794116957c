"""Shared fixtures: one tiny embedded corpus per test session (flite voices only, seconds to build)."""

from __future__ import annotations

import pytest

from datamodules.embedded import EmbeddedCorpus, EmbeddedCorpusConfig, prepare_embedded_corpus
from datamodules.mixing import SourceConfig
from datamodules.units import UnitsConfig

TINY = EmbeddedCorpusConfig(
    num_train=24,
    num_dev=4,
    num_test=4,
    num_text_train=40,
    num_text_dev=8,
    voices=("flite_rms", "flite_slt"),
    variants=((1.0, 0), (1.1, 150)),
    num_test_speakers=1,
    chunk_size=6,
    units=UnitsConfig(num_units=16, max_frames=4000, iterations=5),
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedCorpus:
    """A 32-utterance embedded corpus with 16 units."""
    return prepare_embedded_corpus(tmp_path_factory.mktemp("embedded"), TINY)


def stage1_sources(corpus: EmbeddedCorpus) -> list[SourceConfig]:
    """ASR + TTS on the corpus' train cuts, text LM on its train text."""
    train = str(corpus.cuts["train"])
    return [
        SourceConfig("embedded", "asr", train),
        SourceConfig("embedded", "tts", train),
        SourceConfig("fortunes", "text_lm", str(corpus.text["train"])),
    ]


@pytest.fixture
def sources(tiny_corpus: EmbeddedCorpus) -> list[SourceConfig]:
    """Stage-1 train sources of the tiny corpus."""
    return stage1_sources(tiny_corpus)

"""Long data work prints progress: corpus speaking, unit fitting and Whisper features (issue 17, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lhotse import CutSet

from datamodules.embedded import EmbeddedCorpusConfig, prepare_embedded_corpus
from datamodules.encoder_features import store_encoder_features
from datamodules.units import UnitsConfig
from lightning_most.audio.features import FeatureConfig

SMALL = EmbeddedCorpusConfig(
    num_train=4, num_dev=2, num_test=2, num_text_train=4, num_text_dev=2,
    voices=("flite_rms", "flite_slt"), variants=((1.0, 0),), num_test_speakers=1, chunk_size=2,
    units=UnitsConfig(num_units=4, max_frames=500, iterations=2),
)  # fmt: skip


def test_corpus_building_and_whisper_features_print_progress(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    corpus = prepare_embedded_corpus(tmp_path / "corpus", SMALL)
    err = capfd.readouterr().err
    assert "embedded corpus: speaking" in err and "8/8" in err  # a bar over the 8 utterances
    assert "units: fitting 4 k-means centroids" in err
    assert "units: quantizing the train split" in err and "units: done in" in err

    cuts = CutSet.from_file(corpus.cuts["dev"]).to_eager()
    store_encoder_features(cuts, tmp_path / "states", FeatureConfig(kind="whisper", frame_stack=2))
    err = capfd.readouterr().err
    assert "Whisper features" in err and f"{len(cuts)}/{len(cuts)}" in err

"""Lhotse Shar export and lazy read-back (audio, transcripts, units), and jsonl text shards."""

from __future__ import annotations

import numpy as np
from lhotse import CutSet

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig
from datamodules.shards import export_shar, read_shar, write_text_shards
from datamodules.text import text_cuts


def test_shar_round_trip_keeps_audio_text_and_units(tiny_corpus, tmp_path):
    cuts = CutSet.from_file(tiny_corpus.cuts["dev"]).to_eager()
    written = export_shar(cuts, tmp_path / "shar" / "dev", shard_size=3)
    assert sorted(written) == ["cuts", "recording", "units"] and len(written["cuts"]) == 2
    back = {c.id: c for c in read_shar(tmp_path / "shar" / "dev", shuffle_shards=False)}
    assert list(back) == list(cuts.ids)
    for cut in cuts:
        again = back[cut.id]
        assert again.supervisions[0].text == cut.supervisions[0].text
        np.testing.assert_array_equal(again.load_audio(), cut.load_audio())  # flac is lossless
        np.testing.assert_array_equal(again.load_units(), cut.load_units())


def test_data_module_streams_from_shar_and_text_shards(tiny_corpus, tmp_path):
    export_shar(CutSet.from_file(tiny_corpus.cuts["train"]), tmp_path / "train", shard_size=8)
    texts = [
        {"id": f"t{i}", "text": t.supervisions[0].text} for i, t in enumerate(text_cuts(str(tiny_corpus.text["train"])))
    ]
    shards = write_text_shards(texts, tmp_path / "text", shard_size=15)
    assert [p.name for p in shards] == ["text.000000.jsonl.gz", "text.000001.jsonl.gz", "text.000002.jsonl.gz"]
    assert [c.id for c in text_cuts(str(tmp_path / "text"))] == [t["id"] for t in texts]
    module = MostDataModule(
        train_sources=[
            SourceConfig("shar", "asr", str(tmp_path / "train")),
            SourceConfig("shar", "tts", str(tmp_path / "train")),
            SourceConfig("text", "text_lm", str(tmp_path / "text" / "text.*.jsonl.gz")),
        ],
        loader=LoaderConfig(num_workers=0, max_duration=20.0, max_cut_duration=20.0),
    )
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape[0] == len(batch["cut_ids"]) > 0
    assert module.skipped == {}


def test_shar_exports_precomputed_features(tmp_path):
    from lhotse.testing.dummies import dummy_cut, dummy_in_memory_features

    cuts = CutSet([dummy_cut(i, with_data=True, features=dummy_in_memory_features(i)) for i in range(3)])
    fields = export_shar(cuts, tmp_path / "feats", shard_size=2)
    assert set(fields) == {
        "cuts",
        "recording",
        "features",
        "custom_features",
        "custom_indexes",
        "custom_embedding",
        "custom_recording",
    }
    for cut, again in zip(cuts, read_shar(tmp_path / "feats", shuffle_shards=False)):
        np.testing.assert_allclose(again.load_features(), cut.load_features(), atol=0.1)  # lilcom is lossy
        np.testing.assert_array_equal(again.load_custom_indexes(), cut.load_custom_indexes())
        np.testing.assert_array_equal(again.load_custom_recording(), cut.load_custom_recording())

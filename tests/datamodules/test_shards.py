"""Lhotse Shar export and lazy read-back (audio, transcripts, units), and jsonl text shards."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig
from datamodules.shards import export_shar, read_manifest, read_shar, write_text_shards
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


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _read_all(path: Path, caplog) -> tuple[list[str], Counter]:
    """Cut ids an eval loader over source `path` (asr) delivers, and what it skipped."""
    sources = [SourceConfig("torn", "asr", str(path))]
    module = MostDataModule(train_sources=sources, task_weights={"asr": 1.0},
                            loader=LoaderConfig(num_workers=0, max_duration=40.0, max_cut_duration=40.0))
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        loader = module.make_eval_loader(sources)
        kept = [cut_id for batch in loader for cut_id in batch["cut_ids"]]
    return kept, loader.skipped


def test_a_torn_shar_recording_tar_is_counted_per_cut_and_named(tiny_corpus, tmp_path, caplog):
    cuts = CutSet.from_file(tiny_corpus.cuts["dev"]).to_eager()
    export_shar(cuts, tmp_path / "shar", shard_size=2)
    _cut_in_half(tmp_path / "shar" / "recording.000000.tar")
    kept, skipped = _read_all(tmp_path / "shar", caplog)
    assert set(skipped) == {"unreadable_audio"} and skipped["unreadable_audio"] >= 1
    assert len(kept) + skipped["unreadable_audio"] == len(cuts)  # every cut delivered or counted
    assert set(list(cuts.ids)[2:]) <= set(kept)  # the other shard is read whole
    lost = [record.getMessage() for record in caplog.records if "unreadable_audio" in record.getMessage()]
    assert len(lost) == skipped["unreadable_audio"]
    assert all(f"Shar file {tmp_path / 'shar' / 'recording.000000.tar'} ends before" in m for m in lost)


def test_a_torn_shar_cut_manifest_keeps_its_first_cuts_and_counts_the_rest(tiny_corpus, tmp_path, caplog):
    cuts = CutSet.from_file(tiny_corpus.cuts["train"]).to_eager()
    export_shar(cuts, tmp_path / "shar", shard_size=12)
    _cut_in_half(tmp_path / "shar" / "cuts.000000.jsonl.gz")
    kept, skipped = _read_all(tmp_path / "shar", caplog)
    assert skipped == Counter(unreadable_manifest=1)
    ids = list(cuts.ids)
    assert set(ids[12:]) <= set(kept) and len(kept) < len(ids)
    first = [i for i in kept if i in set(ids[:12])]
    assert first == ids[: len(first)]  # the cuts before the tear, in order
    assert any("cuts.000000.jsonl.gz cannot be read past its first" in r.getMessage() for r in caplog.records)


def test_a_torn_manifest_source_keeps_its_first_cuts_and_counts_the_rest(tiny_corpus, tmp_path, caplog):
    manifest = tmp_path / "cuts_train.jsonl.gz"
    manifest.write_bytes(Path(tiny_corpus.cuts["train"]).read_bytes())
    _cut_in_half(manifest)
    kept, skipped = _read_all(manifest, caplog)
    ids = list(CutSet.from_file(tiny_corpus.cuts["train"]).ids)
    assert skipped == Counter(unreadable_manifest=1) and 0 < len(kept) < len(ids)
    assert sorted(kept) == sorted(ids[: len(kept)])
    assert any(f"cut manifest {manifest} cannot be read past" in r.getMessage() for r in caplog.records)


def test_nothing_readable_left_fails_naming_the_file(tiny_corpus, tmp_path):
    manifest = tmp_path / "cuts.jsonl.gz"
    manifest.write_bytes(Path(tiny_corpus.cuts["dev"]).read_bytes()[:20])
    with pytest.raises(ValueError, match=f"cut manifest {manifest} holds no readable cut .* rebuild it"):
        list(read_manifest(manifest))
    export_shar(CutSet.from_file(tiny_corpus.cuts["dev"]), tmp_path / "shar", shard_size=10)
    torn = tmp_path / "shar" / "cuts.000000.jsonl.gz"
    torn.write_bytes(torn.read_bytes()[:20])
    with pytest.raises(ValueError, match=f"Shar shards {torn} hold no readable cut .* write them again"):
        list(read_shar(tmp_path / "shar"))

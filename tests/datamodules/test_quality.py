"""Bad data is skipped, counted per reason and named in a warning; never a crash, never a silent drop."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections import Counter

from lhotse import CutSet

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig


def _with_audio_path(cut, path):
    source = dataclasses.replace(cut.recording.sources[0], source=str(path))
    return dataclasses.replace(cut, recording=dataclasses.replace(cut.recording, sources=[source]))


def _with_text(cut, text):
    return dataclasses.replace(cut, supervisions=[dataclasses.replace(cut.supervisions[0], text=text)])


def test_each_kind_of_bad_data_is_skipped_and_counted(tiny_corpus, tmp_path, caplog):
    good = CutSet.from_file(tiny_corpus.cuts["train"]).to_eager().subset(first=9)
    c = list(good)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    bad = [
        _with_audio_path(c[0], tmp_path / "missing.wav").with_id("bad-missing"),
        _with_audio_path(c[1], corrupt).with_id("bad-corrupt"),
        _with_text(c[2], "").with_id("bad-empty"),
        _with_text(c[3], "\x00\x01\x02").with_id("bad-nontext"),
        dataclasses.replace(c[4], duration=0.0, id="bad-zero"),
        dataclasses.replace(c[5], duration=25.0, id="bad-long"),
    ]
    no_units = dataclasses.replace(c[6], id="bad-no-units", custom={})
    asr_manifest, tts_manifest = tmp_path / "asr.jsonl.gz", tmp_path / "tts.jsonl.gz"
    CutSet([*bad, c[7], c[8]]).to_file(asr_manifest)
    CutSet([no_units, c[7]]).to_file(tts_manifest)
    text_shard = tmp_path / "text.000000.jsonl"
    lines = [
        '{"id": "t-ok", "text": "A fine sentence."}',
        "{not json",
        '{"id": "t-null", "text": null}',
        '{"id": "t-num", "text": 42}',
    ]
    text_shard.write_text("\n".join(lines) + "\n")
    sources = [
        SourceConfig("bad", "asr", str(asr_manifest)),
        SourceConfig("bad", "tts", str(tts_manifest)),
        SourceConfig("bad", "text_lm", str(text_shard)),
    ]
    module = MostDataModule(train_sources=sources,
        loader=LoaderConfig(num_workers=0, max_duration=40.0, max_cut_duration=20.0))
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        loader = module.make_eval_loader(sources)
        kept = [cut_id for batch in loader for cut_id in batch["cut_ids"]]
    assert sorted(kept) == sorted([c[7].id, c[8].id, c[7].id, "t-ok"])
    assert loader.skipped == Counter(
        missing_audio=1, unreadable_audio=1, empty_text=2, non_text=3, zero_length=1, too_long=1, missing_units=1
    )
    for cut_id in ("bad-missing", "bad-corrupt", "bad-empty", "bad-nontext", "bad-zero", "bad-long", "bad-no-units"):
        assert any(cut_id in record.getMessage() for record in caplog.records), cut_id


def test_train_loader_counts_skips_seen_by_workers(tiny_corpus, tmp_path):
    c = list(CutSet.from_file(tiny_corpus.cuts["train"]).to_eager().subset(first=3))
    manifest = tmp_path / "asr.jsonl.gz"
    CutSet([_with_audio_path(c[0], tmp_path / "gone.wav").with_id("gone"), c[1], c[2]]).to_file(manifest)
    module = MostDataModule(
        train_sources=[SourceConfig("bad", "asr", str(manifest))],
        task_weights={"asr": 1.0},
        loader=LoaderConfig(infinite=False, num_buckets=2, num_workers=2, max_duration=40.0, max_cut_duration=20.0),
    )
    ids = [i for batch in module.train_dataloader() for i in batch["cut_ids"]]
    assert sorted(ids) == sorted([c[1].id, c[2].id])
    assert module.skipped == Counter(missing_audio=1)


def test_text_shard_helper_lines(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"text": "No id here, just words."}) + "\n\n")
    module = MostDataModule(
        train_sources=[SourceConfig("t", "text_lm", str(path))], task_weights={"text_lm": 1.0},
            loader=LoaderConfig(num_workers=0),
    )
    batch = next(iter(module.make_eval_loader(module.train_sources)))
    assert batch["cut_ids"] == ["t-1"] and batch["texts"] == ["No id here, just words."]

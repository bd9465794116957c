"""Webdataset tar shards as a source: read-back, mix ratios, bad members counted, exact resume, writer round trip."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from lhotse import CutSet
from webdataset import TarWriter

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.mixing import SourceConfig, open_source
from datamodules.shards import export_shar
from datamodules.webdataset_shards import (
    export_webdataset,
    is_webdataset_path,
    read_webdataset,
    resolve_webdataset_shards,
)
from lightning_most.main import main

SR = 16000


def _audio(seconds: float, seed: int) -> np.ndarray:
    """(S,) float32 on the 16-bit grid, so FLAC/WAV round trips are exact."""
    samples = np.random.default_rng(seed).integers(-8000, 8000, int(seconds * SR))
    return (samples / 32768.0).astype(np.float32)


def _encoded(audio: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SR, format=fmt.upper(), subtype="PCM_16")
    return buffer.getvalue()


def _write_tar(path: Path, samples: list[dict]) -> Path:
    """A shard written by webdataset's own TarWriter (member suffix -> bytes)."""
    with TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def _corpus_layout(tmp_path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Two shards in the common layout: .flac + .txt keys, and .wav + .json keys; returns id -> (audio, text)."""
    expected, shards = {}, []
    for shard in range(2):
        samples = []
        for i in range(3):
            key = f"spk{shard}-utt{i}"
            audio, text = _audio(0.5 + 0.25 * i, seed=10 * shard + i), f"utterance {i} of shard {shard}"
            if shard == 0:
                samples.append({"__key__": key, "flac": _encoded(audio, "flac"), "txt": text.encode()})
            else:
                meta = {"text": text, "speaker": f"spk{shard}", "language": "en"}
                samples.append({"__key__": key, "wav": _encoded(audio, "wav"), "json": json.dumps(meta).encode()})
            expected[key] = (audio, text)
        shards.append(_write_tar(tmp_path / f"shard-{shard:06d}.tar", samples))
    return expected


def test_common_layout_reads_back_as_cuts_with_audio_and_transcripts(tmp_path):
    expected = _corpus_layout(tmp_path)
    cuts = list(read_webdataset(str(tmp_path), shuffle_shards=False))
    assert [c.id for c in cuts] == list(expected)
    for cut in cuts:
        audio, text = expected[cut.id]
        assert cut.supervisions[0].text == text and cut.sampling_rate == SR
        assert cut.duration == pytest.approx(len(audio) / SR)
        np.testing.assert_array_equal(cut.load_audio()[0], audio)
    assert {c.supervisions[0].speaker for c in cuts} == {None, "spk1"}
    # Every way of naming the shards names the same two files.
    names = [str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000001.tar")]
    for path in (str(tmp_path), str(tmp_path / "shard-*.tar"), str(tmp_path / "shard-{000000..000001}.tar")):
        assert is_webdataset_path(path) and resolve_webdataset_shards(path) == names
    with pytest.raises(FileNotFoundError, match=r"missing shard files .*shard-000002\.tar"):
        resolve_webdataset_shards(str(tmp_path / "shard-{000000..000002}.tar"))
    module = MostDataModule(train_sources=[SourceConfig("wds", "asr", names[0])], task_weights={"asr": 1.0})
    with pytest.raises(ValueError, match="webdataset shards.*asr_decoding.word_lm.text_files"):
        module.word_lm_text_files()  # a tar is no text file for the word LM


def test_shards_are_reshuffled_each_pass_reproducibly(tmp_path):
    for shard in range(6):
        key = f"k{shard}"
        _write_tar(tmp_path / f"s{shard}.tar", [{"__key__": key, "flac": _encoded(_audio(0.2, shard), "flac"), "txt": b"a b"}])
    cuts = read_webdataset(str(tmp_path), seed=3)
    passes = [[c.id for c in cuts] for _ in range(3)]
    again = read_webdataset(str(tmp_path), seed=3)
    assert [[c.id for c in again] for _ in range(3)] == passes  # a fresh reader replays the same passes
    assert sorted(passes[0]) == [f"k{i}" for i in range(6)] and len({tuple(p) for p in passes}) > 1


def test_writer_round_trip_keeps_audio_text_speaker_and_units(tiny_corpus, tmp_path):
    cuts = CutSet.from_file(tiny_corpus.cuts["dev"]).to_eager()
    written = export_webdataset(cuts, tmp_path / "wds", shard_size=3)
    assert written.written == len(cuts) == 4 and written.skipped == Counter()
    assert [p.name for p in written.shards] == ["shard-000000.tar", "shard-000001.tar"]
    with tarfile.open(written.shards[0]) as tar:
        key = cuts[0].id.replace(".", "_")  # a key has no dot (webdataset splits names there); json "id" keeps it
        assert {f"{key}.flac", f"{key}.txt", f"{key}.json", f"{key}.units.npy"} <= set(tar.getnames())
    back = {c.id: c for c in read_webdataset(str(tmp_path / "wds"), shuffle_shards=False)}
    assert list(back) == list(cuts.ids)
    for cut in cuts:
        again = back[cut.id]
        assert again.supervisions[0].text == cut.supervisions[0].text
        assert again.supervisions[0].speaker == cut.supervisions[0].speaker
        np.testing.assert_array_equal(again.load_audio(), cut.load_audio())  # 16-bit FLAC is lossless
        np.testing.assert_array_equal(again.load_units(), cut.load_units())
        assert again.units.frame_shift == cut.units.frame_shift


def test_export_command_writes_shards_from_a_manifest_and_a_shar_folder(tiny_corpus, tmp_path, capsys):
    manifest = str(tiny_corpus.cuts["dev"])
    assert main(["export_webdataset", "--cuts", manifest, "--out_dir", str(tmp_path / "a"), "--shard_size", "2"]) is None
    assert "wrote 4 utterances to 2 shards" in capsys.readouterr().out
    export_webdataset(CutSet.from_file(manifest), tmp_path / "again", shard_size=2)
    for name in ("shard-000000.tar", "shard-000001.tar"):  # the same cuts give the same bytes
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    export_shar(CutSet.from_file(manifest), tmp_path / "shar", shard_size=4)
    assert not is_webdataset_path(str(tmp_path / "shar"))  # a Shar folder holds tars too, but is not webdataset
    main(["export_webdataset", "--cuts", str(tmp_path / "shar"), "--out_dir", str(tmp_path / "b")])
    ids = [c.id for c in read_webdataset(str(tmp_path / "b"), shuffle_shards=False)]
    assert ids == [c.id for c in read_webdataset(str(tmp_path / "a"), shuffle_shards=False)] == list(
        CutSet.from_file(manifest).ids
    )


def _mixed_module(tiny_corpus, wds_dir: Path, **kwargs) -> MostDataModule:
    """ASR from shards (weight 3) and a manifest (weight 1), TTS from the shards' units, text LM from jsonl."""
    train = str(tiny_corpus.cuts["train"])
    sources = [
        SourceConfig("wds", "asr", str(wds_dir / "shard-{000000..000005}.tar"), weight=3.0),
        SourceConfig("manifest", "asr", train, weight=1.0),
        SourceConfig("wds", "tts", str(wds_dir)),
        SourceConfig("fortunes", "text_lm", str(tiny_corpus.text["train"])),
    ]
    options = {"num_workers": 0, "max_duration": 20.0, "max_cut_duration": 20.0, "num_buckets": 2, "buffer_size": 50,
               "num_cuts_for_bins_estimate": 200}
    return MostDataModule(train_sources=sources, loader=LoaderConfig(**{**options, **kwargs}))


@pytest.fixture
def train_shards(tiny_corpus, tmp_path) -> Path:
    """The tiny corpus' 24 train cuts (with units) as 6 shards of 4."""
    export_webdataset(CutSet.from_file(tiny_corpus.cuts["train"]), tmp_path / "wds", shard_size=4)
    return tmp_path / "wds"


def test_mix_with_a_manifest_source_realises_the_weights(tiny_corpus, train_shards):
    loader = _mixed_module(tiny_corpus, train_shards).make_train_loader()
    drawn: Counter = Counter()
    for cuts in loader.sampler:
        drawn.update((c.custom["task"], c.custom["source"]) for c in cuts)
        if sum(drawn.values()) >= 2000:
            break
    total = sum(drawn.values())
    expected = {("asr", "wds"): 0.3, ("asr", "manifest"): 0.1, ("tts", "wds"): 0.4, ("text_lm", "fortunes"): 0.2}
    for key, share in expected.items():
        assert abs(drawn[key] / total - share) <= 0.03, (key, drawn)
    assert loader.skipped == Counter()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_sees_the_same_batches(tiny_corpus, train_shards, num_workers):
    def module() -> MostDataModule:
        return _mixed_module(tiny_corpus, train_shards, num_workers=num_workers)

    reference = [b["cut_ids"] for _, b in zip(range(14), module().train_dataloader())]
    # The 14 batches cross the shards' first pass (24 cuts per source), so the reshuffled second pass is replayed too.
    assert sum(len(ids) for ids in reference) > 2 * 24
    interrupted = module()
    for _, _ in zip(range(8), interrupted.train_dataloader()):
        pass
    state = interrupted.state_dict()
    resumed = module()
    resumed.load_state_dict(state)
    assert [b["cut_ids"] for _, b in zip(range(6), resumed.train_dataloader())] == reference[8:]


def _truncated_shard(path: Path, keys: list[str]) -> Path:
    """A shard of `keys` (flac + txt) cut off in the middle of the last key's audio."""
    samples = [{"__key__": k, "flac": _encoded(_audio(0.5, i), "flac"), "txt": b"fine words"} for i, k in enumerate(keys)]
    _write_tar(path, samples)
    with tarfile.open(path) as tar:
        last_audio = tar.getmember(f"{keys[-1]}.flac")
    data = path.read_bytes()
    path.write_bytes(data[: last_audio.offset_data + last_audio.size // 2])
    return path


def test_bad_members_are_skipped_counted_and_named(tmp_path, caplog):
    good = _encoded(_audio(0.5, 1), "flac")
    _write_tar(tmp_path / "shard-000000.tar", [
        {"__key__": "ok-flac", "flac": good, "txt": b"a good one"},
        {"__key__": "ok-json", "flac": good, "json": b'{"text": "another good one"}'},
        {"__key__": "bad-garbage", "flac": b"this is not audio at all" * 20, "txt": b"words"},
        {"__key__": "bad-body", "flac": good[:300], "txt": b"header fine, samples cut off"},
        {"__key__": "bad-no-audio", "txt": b"a transcript alone"},
        {"__key__": "bad-no-text", "flac": good},
        {"__key__": "bad-json-without-text", "flac": good, "json": b'{"speaker": "x"}'},
        {"__key__": "bad-latin1", "flac": good, "txt": "caf\xe9".encode("latin-1")},
    ])
    _truncated_shard(tmp_path / "shard-000001.tar", ["ok-before-cut", "ok-before-cut-2", "cut-short"])
    wds = str(tmp_path / "shard-{000000..000001}.tar")
    sources = [SourceConfig("bad", "asr", wds)]
    module = MostDataModule(train_sources=sources, task_weights={"asr": 1.0},
        loader=LoaderConfig(num_workers=0, max_duration=40.0))
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        loader = module.make_eval_loader(sources)
        kept = sorted(cut_id for batch in loader for cut_id in batch["cut_ids"])
    assert kept == ["ok-before-cut", "ok-before-cut-2", "ok-flac", "ok-json"]
    assert loader.skipped == Counter(unreadable_audio=3, missing_audio=1, empty_text=2, non_text=1)
    for name in ("bad-garbage", "bad-body", "bad-no-audio", "bad-no-text", "bad-json-without-text", "bad-latin1",
                 "shard-000001.tar"):
        assert any(name in record.getMessage() for record in caplog.records), name


def test_shards_with_nothing_usable_fail_clearly(tmp_path):
    _write_tar(tmp_path / "only-bad.tar", [
        {"__key__": "a", "txt": b"no audio"},
        {"__key__": "b", "flac": b"not audio" * 40, "txt": b"undecodable"},
    ])
    module = MostDataModule(
        train_sources=[SourceConfig("bad", "asr", str(tmp_path / "only-bad.tar"))], task_weights={"asr": 1.0},
        loader=LoaderConfig(num_workers=0, max_duration=40.0),
    )
    with pytest.raises(ValueError, match=r"only-bad\.tar.*hold no usable example.*'missing_audio': 1"):
        next(iter(module.train_dataloader()))


def test_pickled_lhotse_shards_are_refused_not_unpickled(tmp_path):
    _write_tar(tmp_path / "lhotse.tar", [{"__key__": "cut-0", "data": b"pretend pickle: never loaded"}])
    cuts = open_source(SourceConfig("lhotse", "asr", str(tmp_path / "lhotse.tar")), "byte", 50.0, seed=0)
    with pytest.raises(ValueError, match="pickled cuts.*export_webdataset"):
        next(iter(cuts))


@pytest.mark.slow  # three tiny fits, ~2 min on 2 busy cores; the loader-level resume test above is quick
def test_killed_fit_on_shards_resumes_with_the_same_batches_and_losses(tiny_corpus, train_shards, tmp_path):
    """`python -m lightning_most fit` killed mid-run and resumed from its checkpoint (tests/test_resume.py's run,
    its data section swapped for webdataset shards) trains on the same batches with the same losses."""
    from tests.test_resume import CHECKPOINT_EVERY, KILL_AT_STEP, MAX_STEPS, kill_at
    from tests.tiny_fit import KilledRun, read_steps, write_config

    def config(root: Path, *extra_callbacks: dict) -> Path:
        path = write_config(Path(tiny_corpus.root), root, MAX_STEPS, CHECKPOINT_EVERY, extra_callbacks=extra_callbacks)
        run = yaml.safe_load(path.read_text())
        run["data"] = {"class_path": "datamodules.MostDataModule", "init_args": {
            "train_sources": [
                {"name": "wds", "task": "asr", "path": str(train_shards)},
                {"name": "wds", "task": "tts", "path": str(train_shards / "shard-*.tar")},
                {"name": "fortunes", "task": "text_lm", "path": str(tiny_corpus.text["train"])},
            ],
            **{k: v for k, v in run["data"]["init_args"].items() if k not in ("corpus_dir", "corpus")},
            "num_cuts_for_bins_estimate": 200,
        }}
        path.write_text(yaml.safe_dump(run))
        return path

    main(["fit", "--config", str(config(tmp_path / "full"))])
    reference = {r["step"]: r for r in read_steps(tmp_path / "full")}
    with pytest.raises(KilledRun):
        main(["fit", "--config", str(config(tmp_path / "killed", kill_at(KILL_AT_STEP)))])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    main(["fit", "--config", str(config(tmp_path / "resumed")), "--ckpt_path", str(last)])
    resumed = {r["step"]: r for r in read_steps(tmp_path / "resumed")}
    steps = list(range(CHECKPOINT_EVERY + 1, MAX_STEPS + 1))
    assert [resumed[s]["cut_ids"] for s in steps] == [reference[s]["cut_ids"] for s in steps]
    assert reference[CHECKPOINT_EVERY + 1]["cut_ids"] != reference[1]["cut_ids"]
    assert [resumed[s]["loss"] for s in steps] == pytest.approx([reference[s]["loss"] for s in steps], rel=1e-6, abs=1e-7)

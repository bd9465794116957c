"""MostDataModule: exact batch layout, task mix, max_duration, ranks, resumption, config validation."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.testing.dummies import dummy_recording

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.dataset import MostDataset
from datamodules.mixing import SourceConfig, tag_cut
from lightning_most.audio.features import FeatureConfig
from lightning_most.batch import IGNORE_INDEX, TASKS


def _cut(i: int, text: str, task: str, units: list[int] | None = None, audio: bool = True) -> MonoCut:
    if audio:
        cut = dataclasses.replace(dummy_recording(i, duration=1.0, with_data=True).to_cut(), id=f"cut-{i}")
    else:
        cut = MonoCut(id=f"cut-{i}", start=0.0, duration=0.1, channel=0)
    cut.supervisions = [
        SupervisionSegment(f"sup-{i}", cut.recording_id if audio else cut.id, 0.0, cut.duration, text=text)
    ]
    if units is not None:
        cut = cut.attach_tensor("units", np.array(units, dtype=np.int32), frame_shift=0.02, temporal_dim=0)
    return tag_cut(cut, task, "dummy")


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_exact_batch_layout_of_a_tiny_manifest(frame_stack):
    dataset = MostDataset("byte", FeatureConfig(frame_stack=frame_stack))
    s = dataset.specials
    cuts = CutSet([_cut(0, "Hi", "asr"), _cut(1, "Go", "tts", units=[3, 1, 4]), _cut(2, "Ok.", "text_lm", audio=False)])
    batch, skipped = dataset[cuts]
    frames = 100 // frame_stack  # 1 s of 16 kHz audio at 10 ms frames, stacked
    T = 4 + frames + 2 + 1  # bos audio_start F.. audio_end asr H i eos
    assert skipped == Counter()
    assert batch["input_ids"].shape == batch["labels"].shape == batch["modality_ids"].shape == (3, T)
    assert batch["audio_features"].shape == (frames, 80 * frame_stack)
    assert batch["feature_mask"].sum() == frames and batch["feature_mask"][0].sum() == frames
    assert batch["task_ids"].tolist() == [TASKS.index("asr"), TASKS.index("tts"), TASKS.index("text_lm")]
    v = s.text_vocab_size
    tts_ids = [s.bos, s.tts, ord("G"), ord("o"), s.audio_start, v + 3, v + 1, v + 4, s.audio_end]
    assert batch["input_ids"][1, :9].tolist() == tts_ids
    assert batch["input_ids"][1, 9:].eq(s.pad).all()
    assert batch["modality_ids"][1, :9].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert batch["labels"][1, :9].tolist() == [IGNORE_INDEX] * 4 + [v + 3, v + 1, v + 4, s.audio_end, IGNORE_INDEX]
    assert batch["input_ids"][2, :5].tolist() == [s.bos, ord("O"), ord("k"), ord("."), s.eos]
    assert batch["labels"][2, :5].tolist() == [ord("O"), ord("k"), ord("."), s.eos, IGNORE_INDEX]
    assert batch["attention_mask"].sum(1).tolist() == [T, 9, 5]
    assert batch["labels"][0, frames + 3 : frames + 6].tolist() == [ord("H"), ord("i"), s.eos]
    assert batch["prompt_lengths"].tolist() == [frames + 4, 5, 1]
    assert batch["texts"] == ["Hi", "Go", "Ok."] and batch["cut_ids"] == ["cut-0", "cut-1", "cut-2"]


def _module(sources, **kwargs) -> MostDataModule:
    return MostDataModule(train_sources=sources,
        loader=LoaderConfig(num_workers=0, max_duration=40.0, max_cut_duration=20.0), **kwargs)


def _sampled(loader, num_cuts: int) -> list[CutSet]:
    batches, n = [], 0
    for cuts in loader.sampler:
        batches.append(cuts)
        n += len(cuts)
        if n >= num_cuts:
            return batches
    raise AssertionError("the infinite sampler ended")


def test_realised_task_mix_over_2000_samples(sources):
    batches = _sampled(_module(sources).make_train_loader(), 2000)
    tasks = Counter(c.custom["task"] for b in batches for c in b)
    total = sum(tasks.values())
    for task, weight in {"asr": 0.4, "tts": 0.4, "text_lm": 0.2}.items():
        assert abs(tasks[task] / total - weight) <= 0.03, (task, tasks)


def test_corpus_weights_within_a_task(sources, tiny_corpus):
    extra = SourceConfig("embedded_dev", "asr", str(tiny_corpus.cuts["dev"]), weight=1.0)
    module = _module(
        [*sources[:1], dataclasses.replace(sources[0], name="again", weight=3.0), extra], task_weights={"asr": 1.0}
    )
    batches = _sampled(module.make_train_loader(), 2000)
    by_source = Counter(c.custom["source"] for b in batches for c in b)
    total = sum(by_source.values())
    assert abs(by_source["again"] / total - 0.6) <= 0.04 and abs(by_source["embedded_dev"] / total - 0.2) <= 0.04


def test_batches_respect_max_duration(sources):
    for cuts in _sampled(_module(sources).make_train_loader(), 500):
        assert sum(c.duration for c in cuts) <= 40.0


def test_two_ranks_see_disjoint_data(sources):
    module = _module(sources)
    seen = [
        {(c.custom["task"], c.id) for b in _sampled(module.make_train_loader(rank, 2), 60) for c in b}
        for rank in (0, 1)
    ]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_continues_where_it_stopped(sources, num_workers):
    def module() -> MostDataModule:
        return MostDataModule(train_sources=sources,
            loader=LoaderConfig(num_workers=num_workers, max_duration=20.0, max_cut_duration=20.0))

    reference = [b["cut_ids"] for _, b in zip(range(7), module().train_dataloader())]
    interrupted = module()
    for _, _ in zip(range(4), interrupted.train_dataloader()):
        pass
    state = interrupted.state_dict()
    resumed = module()
    resumed.load_state_dict(state)
    continued = [b["cut_ids"] for _, b in zip(range(3), resumed.train_dataloader())]
    assert continued == reference[4:]


def test_val_loader_is_deterministic_and_complete(tiny_corpus, sources):
    dev = str(tiny_corpus.cuts["dev"])
    module = _module(sources, val_sources=[SourceConfig("embedded", "asr", dev), SourceConfig("embedded", "tts", dev)])
    runs = [
        [(int(t), i) for b in module.val_dataloader() for t, i in zip(b["task_ids"], b["cut_ids"])] for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert Counter(t for t, _ in runs[0]) == {TASKS.index("asr"): 4, TASKS.index("tts"): 4}


def test_feature_dim_and_stacked_features(sources):
    module = _module(
        sources, features=FeatureConfig(frame_stack=2), task_weights={"asr": 1.0, "tts": 0.0, "text_lm": 0.0}
    )
    batch = next(iter(module.train_dataloader()))
    assert batch["audio_features"].shape[1] == module.feature_dim == 160
    assert batch["audio_features"].dtype == torch.float32


@pytest.mark.parametrize(
    ("task_weights", "message"),
    [
        ({"asr": -0.1, "tts": 0.4, "text_lm": 0.2}, "negative"),
        ({"asr": 0.0, "tts": 0.0, "text_lm": 0.0}, "all zero"),
        ({"asr": 0.4, "tts": 0.4, "text_lm": 0.2, "speech_qa": 0.1}, "no source"),
        ({"asr": 0.5, "tts": 0.5}, "gives no weight"),
    ],
)
def test_bad_task_weights_fail_at_construction(sources, task_weights, message):
    with pytest.raises(ValueError, match=message):
        _module(sources, task_weights=task_weights)


def test_bad_sources_fail_at_construction(sources):
    with pytest.raises(ValueError, match="negative weight"):
        _module([dataclasses.replace(sources[0], weight=-1.0), *sources[1:]])
    with pytest.raises(ValueError, match="unknown task"):
        _module([*sources, SourceConfig("x", "speech_translation", "x.jsonl.gz")])
    with pytest.raises(ValueError, match="max_cut_duration"):
        MostDataModule(train_sources=sources, loader=LoaderConfig(max_duration=10.0, max_cut_duration=20.0))


def test_embedded_data_module_reads_the_corpus_and_describes_its_audio(tiny_corpus):
    from datamodules.embedded_datamodule import EmbeddedDataModule
    from tests.datamodules.conftest import TINY

    module = EmbeddedDataModule(str(tiny_corpus.root), TINY,
        loader=LoaderConfig(num_workers=0, max_duration=20.0, max_cut_duration=20.0))
    module.prepare_data()  # already built with this config: reused
    assert module.num_units == 16
    audio_io = module.audio_io()
    assert audio_io["unit_encoder"]["encoder"] == "fbank" and audio_io["features"]["num_mel_bins"] == 80
    assert {TASKS[t] for b in module.val_dataloader() for t in b["task_ids"]} == {"asr", "tts"}
    # Sources are interleaved, not concatenated: TTS batches start before the last ASR one, so a run
    # limited to the first dev batches (trainer.limit_val_batches) evaluates both tasks.
    tasks = [{TASKS[t] for t in b["task_ids"]} for b in module.val_dataloader()]
    assert min(i for i, t in enumerate(tasks) if "tts" in t) < max(i for i, t in enumerate(tasks) if "asr" in t)
    assert tasks == [{TASKS[t] for t in b["task_ids"]} for b in module.val_dataloader()]  # the same order every pass
    assert set(next(iter(module.train_dataloader()))) >= {"input_ids", "labels", "modality_ids", "task_ids"}


def test_word_lm_text_files_are_the_training_transcripts_and_text_once_each(sources, tmp_path) -> None:
    from lightning_most.decoding.word_lm import read_sentences

    files = _module(sources).word_lm_text_files()
    assert files == [sources[0].path, sources[2].path]  # the asr and tts sources share one manifest
    cut_texts = [s.text for c in CutSet.from_file(sources[0].path) for s in c.supervisions]
    assert read_sentences(files[0]) == cut_texts
    shar = [SourceConfig("remote", "asr", "https://example.org/cuts.jsonl.gz"), *sources[1:]]
    with pytest.raises(ValueError, match="train source 'remote' .*asr_decoding.word_lm.text_files"):
        _module(shar).word_lm_text_files()

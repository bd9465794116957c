"""The batch contract (`lightning_most.batch`): `collate` builds exactly the documented keys, shapes and dtypes."""

from __future__ import annotations

import torch

from lightning_most.batch import IGNORE_INDEX, STAGE1_TASKS, TASKS, TEXT_ONLY_TASKS, Batch, Modality, Task
from lightning_most.layouts import asr_example, collate, text_lm_example, tts_example
from lightning_most.tokenizer import SpecialTokens

V, F = 256, 6


def _batch(with_frames: bool) -> dict:
    s = SpecialTokens(V)
    examples = [
        tts_example([104, 105], torch.tensor([3, 1]), s, s.text_vocab_size),
        text_lm_example([111, 107], s, text="ok", cut_id="c2"),
    ]
    if with_frames:
        examples.insert(0, asr_example([104], s, s.text_vocab_size, features=torch.randn(4, F), text="h", cut_id="c0"))
    return collate(examples, pad_id=s.pad)


def test_collate_builds_the_documented_keys_shapes_and_dtypes():
    batch = _batch(with_frames=True)
    assert set(batch) == Batch.__required_keys__ | Batch.__optional_keys__
    B, T = batch["input_ids"].shape
    N = int(batch["feature_mask"].sum())
    assert (B, N) == (3, 4)
    for key, dtype in [("input_ids", torch.long), ("modality_ids", torch.long), ("labels", torch.long),
                       ("feature_mask", torch.bool), ("attention_mask", torch.bool)]:
        assert batch[key].shape == (B, T) and batch[key].dtype == dtype, key
    for key in ("task_ids", "prompt_lengths"):
        assert batch[key].shape == (B,) and batch[key].dtype == torch.long, key
    assert batch["audio_features"].shape == (N, F) and batch["audio_features"].dtype == torch.float32
    assert batch["texts"] == ["h", "", "ok"] and batch["cut_ids"] == ["c0", "", "c2"]
    assert [TASKS[i] for i in batch["task_ids"]] == [Task.ASR, Task.TTS, Task.TEXT_LM]
    assert set(batch["modality_ids"].unique().tolist()) == {Modality.TEXT, Modality.AUDIO}
    assert (batch["labels"][~batch["attention_mask"]] == IGNORE_INDEX).all()


def test_audio_features_is_the_only_optional_key():
    assert Batch.__optional_keys__ == {"audio_features"}
    batch = _batch(with_frames=False)
    assert set(batch) == Batch.__required_keys__


def test_task_names_are_their_strings():
    """YAML `task_weights` and `cut.custom["task"]` hold plain strings; they must find the enum members."""
    assert TASKS == ("asr", "tts", "text_lm", "speech_instruct", "text_instruct")  # the order task_ids index
    assert {"asr": 1}[Task.ASR] == 1 and {Task.ASR: 1}["asr"] == 1
    assert set(STAGE1_TASKS) <= set(TASKS) and TEXT_ONLY_TASKS <= set(TASKS)
    assert (Modality.TEXT, Modality.AUDIO) == (0, 1)

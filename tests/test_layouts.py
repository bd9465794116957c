"""Task layouts: targets, modalities, prompt lengths; collation shapes."""

from __future__ import annotations

import torch

from lightning_most.batch import IGNORE_INDEX, TASKS, Modality
from lightning_most.layouts import asr_example, collate, text_lm_example, tts_example
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

TOK = ByteTokenizer()
S = SpecialTokens(256)
V = S.text_vocab_size


def test_asr_layout_targets_transcript_and_eos() -> None:
    e = asr_example(TOK.encode("hi"), S, V, features=torch.randn(3, 8))
    # |bos| |audio_start| F F F |audio_end| |asr| h i |eos|
    assert e.input_ids.tolist()[:2] == [S.bos, S.audio_start]
    assert e.feature_mask.tolist() == [False, False, True, True, True, False, False, False, False, False]
    assert e.modality_ids.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    # position t predicts token t+1: the <asr> position predicts 'h'
    assert e.labels.tolist() == [IGNORE_INDEX] * 6 + [ord("h"), ord("i"), S.eos, IGNORE_INDEX]
    assert e.prompt_length == 7


def test_tts_layout_targets_units_in_audio_modality() -> None:
    e = tts_example(TOK.encode("a"), torch.tensor([4, 5]), S, V)
    # |bos| |tts| a |audio_start| U4 U5 |audio_end|
    assert e.input_ids.tolist() == [S.bos, S.tts, ord("a"), S.audio_start, V + 4, V + 5, S.audio_end]
    assert e.modality_ids.tolist() == [0, 0, 0, 0, Modality.AUDIO, Modality.AUDIO, 0]
    assert e.labels.tolist() == [IGNORE_INDEX] * 3 + [V + 4, V + 5, S.audio_end, IGNORE_INDEX]


def test_collate_pads_and_packs_frames_in_order() -> None:
    f1, f2 = torch.randn(3, 8), torch.randn(2, 8)
    batch = collate([asr_example([97], S, V, features=f1), text_lm_example([98, 99], S),
                     asr_example([100], S, V, features=f2)], S.pad)
    assert batch["input_ids"].shape == (3, 9)
    assert batch["attention_mask"].sum(1).tolist() == [9, 4, 8]
    torch.testing.assert_close(batch["audio_features"], torch.cat([f1, f2]))
    assert batch["task_ids"].tolist() == [TASKS.index("asr"), TASKS.index("text_lm"), TASKS.index("asr")]
    assert (batch["labels"][~batch["attention_mask"]] == IGNORE_INDEX).all()

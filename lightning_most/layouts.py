"""Sequence layouts of every task, and the collation of examples into a batch.

One example is one token sequence. Positions are either token ids (text tokens, special tokens,
audio units, all in the unified id space of `tokenizer.py`) or continuous audio frames, which the
backbone projects to d_model. Layouts (`|...|` are special tokens, `F` frames, `U` units):

    asr             |bos| |audio_start| F F F |audio_end| |asr| t t t |eos|          targets: t.. eos
    tts             |bos| |tts| t t t |audio_start| U U U |audio_end|                targets: U.. audio_end
    text_lm         |bos| t t t |eos|                                                targets: t.. eos
    speech_instruct |bos| |speech_instruct| |audio_start| F F |audio_end| |answer| r r |eos|  targets: r.. eos
    text_instruct   |bos| |text_instruct| q q |answer| r r |eos|                     targets: r.. eos

Audio positions (frames and units) carry `Modality.AUDIO`, everything else `Modality.TEXT`. `collate`
right-pads examples into a `lightning_most.batch.Batch` (the batch contract: keys, shapes, dtypes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_most.batch import IGNORE_INDEX, TASKS, Batch, Modality, Task
from lightning_most.tokenizer import SpecialTokens


@dataclass
class Example:
    """One laid-out sequence (see the module docstring)."""

    task: Task
    input_ids: Tensor  # (T,) long
    modality_ids: Tensor  # (T,) long
    feature_mask: Tensor  # (T,) bool
    labels: Tensor  # (T,) long, already shifted
    audio_features: Tensor | None  # (feature_mask.sum(), F) float, or None without frames
    prompt_length: int
    text: str = ""
    cut_id: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.numel())


class _Builder:
    """Appends segments to a sequence and records which positions are targets."""

    def __init__(self, specials: SpecialTokens) -> None:
        self.specials = specials
        self.ids: list[int] = []
        self.modality: list[Modality] = []
        self.is_frame: list[bool] = []
        self.is_target: list[bool] = []

    def tokens(self, ids: list[int] | Tensor, modality: Modality = Modality.TEXT, target: bool = False) -> None:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        self.ids += ids
        self.modality += [modality] * len(ids)
        self.is_frame += [False] * len(ids)
        self.is_target += [target] * len(ids)

    def frames(self, n: int) -> None:
        self.ids += [self.specials.pad] * n
        self.modality += [Modality.AUDIO] * n
        self.is_frame += [True] * n
        self.is_target += [False] * n

    def build(self, task: Task, features: Tensor | None, text: str, cut_id: str) -> Example:
        ids = torch.tensor(self.ids, dtype=torch.long)
        is_target = torch.tensor(self.is_target, dtype=torch.bool)
        labels = torch.full_like(ids, IGNORE_INDEX)
        # Position t predicts token t+1: a target token's id becomes the label one step earlier.
        labels[:-1] = torch.where(is_target[1:], ids[1:], IGNORE_INDEX)
        first_target = int(is_target.float().argmax()) if bool(is_target.any()) else len(ids)
        return Example(
            task=task,
            input_ids=ids,
            modality_ids=torch.tensor(self.modality, dtype=torch.long),
            feature_mask=torch.tensor(self.is_frame, dtype=torch.bool),
            labels=labels,
            audio_features=features,
            prompt_length=first_target,
            text=text,
            cut_id=cut_id,
        )


def _audio_input(b: _Builder, features: Tensor | None, units: Tensor | None, text_vocab_size: int) -> None:
    s = b.specials
    if (features is None) == (units is None):
        raise ValueError("give exactly one of `features` (continuous frames) or `units` (discrete ids)")
    b.tokens([s.audio_start])
    if features is not None:
        b.frames(features.shape[0])
    else:
        b.tokens(units + text_vocab_size, modality=Modality.AUDIO)
    b.tokens([s.audio_end])


def asr_example(
    text_ids: list[int],
    specials: SpecialTokens,
    text_vocab_size: int,
    features: Tensor | None = None,
    units: Tensor | None = None,
    text: str = "",
    cut_id: str = "",
) -> Example:
    """Speech in (frames (T, F) or units (T,)), transcript out."""
    b = _Builder(specials)
    b.tokens([specials.bos])
    _audio_input(b, features, units, text_vocab_size)
    b.tokens([specials.asr])
    b.tokens(text_ids, target=True)
    b.tokens([specials.eos], target=True)
    return b.build(Task.ASR, features, text, cut_id)


def tts_example(
    text_ids: list[int], units: Tensor, specials: SpecialTokens, text_vocab_size: int, text: str = "", cut_id: str = ""
) -> Example:
    """Text in, audio units (T,) out, closed by <audio_end>."""
    b = _Builder(specials)
    b.tokens([specials.bos, specials.tts])
    b.tokens(text_ids)
    b.tokens([specials.audio_start])
    b.tokens(units + text_vocab_size, modality=Modality.AUDIO, target=True)
    b.tokens([specials.audio_end], target=True)
    return b.build(Task.TTS, None, text, cut_id)


def text_lm_example(text_ids: list[int], specials: SpecialTokens, text: str = "", cut_id: str = "") -> Example:
    """Plain text language modelling."""
    b = _Builder(specials)
    b.tokens([specials.bos])
    b.tokens(text_ids, target=True)
    b.tokens([specials.eos], target=True)
    return b.build(Task.TEXT_LM, None, text, cut_id)


def speech_instruct_example(
    response_ids: list[int],
    specials: SpecialTokens,
    text_vocab_size: int,
    features: Tensor | None = None,
    units: Tensor | None = None,
    text: str = "",
    cut_id: str = "",
) -> Example:
    """Spoken instruction in, text response out."""
    b = _Builder(specials)
    b.tokens([specials.bos, specials.speech_instruct])
    _audio_input(b, features, units, text_vocab_size)
    b.tokens([specials.answer])
    b.tokens(response_ids, target=True)
    b.tokens([specials.eos], target=True)
    return b.build(Task.SPEECH_INSTRUCT, features, text, cut_id)


def text_instruct_example(
    prompt_ids: list[int], response_ids: list[int], specials: SpecialTokens, text: str = "", cut_id: str = ""
) -> Example:
    """Text instruction in, text response out."""
    b = _Builder(specials)
    b.tokens([specials.bos, specials.text_instruct])
    b.tokens(prompt_ids)
    b.tokens([specials.answer])
    b.tokens(response_ids, target=True)
    b.tokens([specials.eos], target=True)
    return b.build(Task.TEXT_INSTRUCT, None, text, cut_id)


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad examples into a `Batch` (`lightning_most.batch`)."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    B, T = len(examples), max(len(e) for e in examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    modality_ids = torch.zeros((B, T), dtype=torch.long)
    feature_mask = torch.zeros((B, T), dtype=torch.bool)
    attention_mask = torch.zeros((B, T), dtype=torch.bool)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        input_ids[i, :n] = e.input_ids
        modality_ids[i, :n] = e.modality_ids
        feature_mask[i, :n] = e.feature_mask
        attention_mask[i, :n] = True
        labels[i, :n] = e.labels
    frames = [e.audio_features for e in examples if e.audio_features is not None]
    batch: Batch = {
        "input_ids": input_ids,
        "modality_ids": modality_ids,
        "feature_mask": feature_mask,
        "attention_mask": attention_mask,
        "labels": labels,
        "task_ids": torch.tensor([TASKS.index(e.task) for e in examples], dtype=torch.long),
        "prompt_lengths": torch.tensor([e.prompt_length for e in examples], dtype=torch.long),
        "texts": [e.text for e in examples],
        "cut_ids": [e.cut_id for e in examples],
    }
    if frames:
        batch["audio_features"] = torch.cat(frames, dim=0).float()  # (N, F)
    return batch

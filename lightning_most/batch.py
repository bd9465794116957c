"""The batch contract: task names, modality ids and the batch dictionary, defined once.

`layouts.collate` builds a `Batch`; the data modules yield it, the stage modules train on it and
`inference` builds it for its prompts. Every other module refers here instead of re-describing it.

Dimension legend: B examples, T padded positions, N audio-frame positions of the whole batch
(`feature_mask.sum()`), F input feature dim (`ModelConfig.audio_feature_dim`).
"""

from enum import IntEnum, StrEnum
from typing import NotRequired, TypedDict

from torch import Tensor


class Task(StrEnum):
    """A sequence layout (`layouts.py`); equal to its string, as written in YAML and `cut.custom["task"]`."""

    ASR = "asr"
    TTS = "tts"
    TEXT_LM = "text_lm"
    SPEECH_INSTRUCT = "speech_instruct"
    TEXT_INSTRUCT = "text_instruct"


TASKS: tuple[Task, ...] = tuple(Task)
"""Every task, in the order `Batch.task_ids` indexes (`TASKS.index(Task.ASR)` is the id of asr)."""
STAGE1_TASKS: tuple[Task, ...] = (Task.ASR, Task.TTS, Task.TEXT_LM)
"""The tasks of stage-1 post-training (the instruction tasks are stage 2's)."""
TEXT_ONLY_TASKS: frozenset[Task] = frozenset({Task.TEXT_LM, Task.TEXT_INSTRUCT})
"""Tasks whose examples hold no audio (their data sources are text shards, not audio cuts)."""


class Modality(IntEnum):
    """Modality id of a position: selects its expert group in the MAMoE layers."""

    TEXT = 0
    AUDIO = 1
    """Audio frames and audio units."""


IGNORE_INDEX = -100
"""`labels` value of a position that predicts nothing (no loss), as `torch.nn.functional.cross_entropy`'s."""


class Batch(TypedDict):
    """One collated batch of laid-out examples (`layouts.collate`), right-padded to T positions.

    (No `from __future__ import annotations` in this module: TypedDict needs the real `NotRequired` to
    tell optional keys from required ones.)
    """

    input_ids: Tensor
    """(B, T) long: unified ids (text tokens, special tokens, audio units; `tokenizer.py`); frame positions hold <pad>."""
    modality_ids: Tensor
    """(B, T) long: `Modality` of each position (frames and units AUDIO, everything else TEXT)."""
    feature_mask: Tensor
    """(B, T) bool: True where the input is a continuous frame of `audio_features`."""
    attention_mask: Tensor
    """(B, T) bool: True on real positions, False on right padding."""
    labels: Tensor
    """(B, T) long: the target id predicted at position t (already shifted: the id at t+1), IGNORE_INDEX = no loss."""
    task_ids: Tensor
    """(B,) long: index of each example's task in TASKS."""
    prompt_lengths: Tensor
    """(B,) long: positions before the first target (the prompt generation is given)."""
    texts: list[str]
    """B reference texts (the transcript, or the response)."""
    cut_ids: list[str]
    """B ids of the Lhotse cuts the examples came from ("" when built from raw inputs)."""
    audio_features: NotRequired[Tensor]
    """(N, F) float: the frames of all feature positions in row-major (B, T) order; absent without frames."""

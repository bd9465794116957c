"""RoPE positions of ASR transcripts scaled onto their audio ("audio_scaled").

With consecutive positions, the query that predicts transcript token j sits N + 3 + j positions in,
and the frame where that token is spoken lies a varying distance back: a decoder trained from
scratch has to find it by content, an induction-like circuit that a tiny model does not form in a
CPU-sized run (bench/RESULTS.md: a 4-layer decoder had not learnt to copy one-hot frames after 600
steps). A pretrained LLM backbone already has such circuits, so the default stays consecutive.

`audio_scaled` instead places the query that predicts token j (j = 0..L, j = L being <eos>) at
f0 + (j + 0.5) * r with r = N / (L + 1): where token j is spoken if speech ran at a uniform rate over
the N frames, so reading it is a near-fixed relative offset, which RoPE attention learns in a few
hundred steps. Positions may be fractional (RoPE angles are position x frequency).

    |bos| |audio_start| F_0 ... F_{N-1} |audio_end|  |asr|       t_0         t_1   ...   t_{L-1}
    0     1             2   ... N+1     N+2          2 + 0.5r    2 + 1.5r    ...         2 + (L + 0.5)r

Training knows L (the transcript; `teacher_forced_positions` jitters it so the model tolerates a wrong
length); decoding estimates it from the audio encoder's greedy CTC output (`decoding.Decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_most.batch import IGNORE_INDEX, TASKS

TRANSCRIPT_POSITION_KINDS = ("sequential", "audio_scaled")


@dataclass
class TranscriptPositionsConfig:
    """RoPE positions of ASR transcripts, the same in training and in decoding (YAML: `model.init_args.transcript_positions`)."""

    kind: Literal["sequential", "audio_scaled"] = "sequential"
    """"sequential" (MoST: consecutive), or "audio_scaled": spread over the audio's frames (see this module) so that
    a decoder trained from scratch learns to read its audio in hundreds of steps; needs the CTC head, whose greedy
    transcript length sets them in decoding."""
    length_jitter: float = 0.15
    """audio_scaled training scales each transcript's length by a factor drawn from [1 - j, 1 + j], so that the
    decoder tolerates the CTC estimate's error."""

    def __post_init__(self) -> None:
        if self.kind not in TRANSCRIPT_POSITION_KINDS:
            raise ValueError(f"transcript_positions.kind={self.kind!r}: use one of {TRANSCRIPT_POSITION_KINDS}")
        if not 0 <= self.length_jitter < 1:
            raise ValueError(f"transcript_positions.length_jitter must lie in [0, 1), got {self.length_jitter}")

    @property
    def scaled(self) -> bool:
        """True for audio_scaled positions."""
        return self.kind == "audio_scaled"


def _consecutive(attention_mask: Tensor) -> Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).float()  # (B, T)


def audio_scaled_positions(attention_mask: Tensor, feature_mask: Tensor, scaled_rows: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) float positions: consecutive, except after the audio of `scaled_rows` (see the module docstring).

    Args:
        attention_mask: (B, T) bool, real positions (left or right padding).
        feature_mask: (B, T) bool, audio-frame positions.
        scaled_rows: (B,) bool, the rows whose tokens after <audio_end> are scaled (ASR rows).
        lengths: (B,) float, L of each scaled row: transcript tokens, <eos> excluded (true or estimated).
    """
    positions = _consecutive(attention_mask)
    for i in scaled_rows.nonzero().flatten().tolist():
        frames = feature_mask[i].nonzero().flatten()
        if frames.numel() == 0:
            continue
        seq = positions[i]
        first, audio_end = seq[frames[0]], seq[frames[-1]] + 1
        rate = frames.numel() / (float(lengths[i]) + 1.0)  # frames per transcript token
        k = seq - audio_end - 1  # 0 at the task token after <audio_end>, the query of t_0
        positions[i] = torch.where(seq > audio_end, first + (k + 0.5) * rate, seq)
    return positions


def decoding_positions(
    prompt: dict, scaled_rows: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Positions for `decoding.generation.generate` after a left-padded prompt that ends with the task token.

    Returns the prompt's positions (B, T) and, per row, the position of the first generated id and the
    step between generated ids: (start, step) = (prompt end + 1, 1) for consecutive rows, and
    (f0 + 1.5r, r) for scaled rows.
    """
    positions = audio_scaled_positions(prompt["attention_mask"], prompt["feature_mask"], scaled_rows, lengths)
    B = positions.shape[0]
    start = positions[:, -1] + 1.0
    step = torch.ones(B, device=positions.device)
    for i in scaled_rows.nonzero().flatten().tolist():
        frames = int(prompt["feature_mask"][i].sum())
        if frames:
            rate = frames / (float(lengths[i]) + 1.0)
            start[i], step[i] = positions[i, -1] + rate, rate
    return positions, start, step


def teacher_forced_positions(
    batch: dict, config: TranscriptPositionsConfig, jitter_seed: int | None = None
) -> Tensor | None:
    """Training positions of a collated batch: None (consecutive), or audio_scaled ones from the true transcript
    lengths, each scaled by a jitter factor drawn from a generator seeded with `jitter_seed` (None: no jitter)."""
    if not config.scaled:
        return None
    is_asr = batch["task_ids"] == TASKS.index("asr")  # (B,)
    lengths = ((batch["labels"] != IGNORE_INDEX).sum(dim=1) - 1).clamp(min=0).float()  # transcript, <eos> excluded
    if jitter_seed is not None and config.length_jitter > 0:
        generator = torch.Generator().manual_seed(jitter_seed)
        factors = 1 + config.length_jitter * (2 * torch.rand(lengths.shape[0], generator=generator) - 1)
        lengths = lengths * factors.to(lengths.device)
    return audio_scaled_positions(batch["attention_mask"], batch["feature_mask"], is_asr, lengths)

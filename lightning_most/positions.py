"""RoPE positions of ASR transcripts scaled onto their audio ("audio_scaled"), and of TTS units scaled onto
their text ("text_scaled").

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

`text_scaled` is the same bias the other way round, for a decoder that must learn TTS from scratch: with
consecutive positions the query that predicts unit j has to find the character being spoken by content, and a
tiny model instead memorises its training utterances (bench/RESULTS.md, "Learned units": the dev TTS loss rises
from the first validation on). It places the query that predicts unit j (j = 0..M, j = M being <audio_end>) at
p0 + (j + 0.5) * s with s = L / (M + 1), over the L text tokens from p0:

    |bos| |tts|  t_0 ... t_{L-1}  |audio_start|   U_0          U_1   ...   U_{M-1}
    0     1      2  ... L+1       2 + 0.5s        2 + 1.5s     ...         2 + (M + 0.5)s

Training knows M (the units; jittered as L is); decoding estimates M = units_per_token x L, a rate given in the
config or counted on the training batches (`UnitPositionsConfig.units_per_token`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_most.batch import IGNORE_INDEX, TASKS

TRANSCRIPT_POSITION_KINDS = ("sequential", "audio_scaled")
UNIT_POSITION_KINDS = ("sequential", "text_scaled")
DEFAULT_UNITS_PER_TOKEN = 3.0
"""Decoding's rate before any TTS row was counted: 50 units/s speech at ~17 bytes/s (the embedded corpus: 2.9 per
spoken character, plus the silence around the words)."""
TTS_TEXT_START = 2
"""Position of a TTS row's first text token (`layouts.tts_example`: |bos| |tts| t_0 ...)."""


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


@dataclass
class UnitPositionsConfig:
    """RoPE positions of TTS units, the same in training and in decoding (YAML: `model.init_args.unit_positions`)."""

    kind: Literal["sequential", "text_scaled"] = "sequential"
    """"sequential" (MoST: consecutive), or "text_scaled": spread over the text (see this module) so that a decoder
    trained from scratch reads the character it is speaking instead of memorising utterances."""
    length_jitter: float = 0.15
    """text_scaled training scales each row's unit count by a factor drawn from [1 - j, 1 + j], so that the decoder
    tolerates decoding's estimate of it."""
    units_per_token: float | None = None
    """Decoding's estimate of a text's units per text token; None = counted on the training batches (all TTS
    units over all TTS text tokens, kept in checkpoints; `DEFAULT_UNITS_PER_TOKEN` before any)."""

    def __post_init__(self) -> None:
        if self.kind not in UNIT_POSITION_KINDS:
            raise ValueError(f"unit_positions.kind={self.kind!r}: use one of {UNIT_POSITION_KINDS}")
        if not 0 <= self.length_jitter < 1:
            raise ValueError(f"unit_positions.length_jitter must lie in [0, 1), got {self.length_jitter}")
        if self.units_per_token is not None and not self.units_per_token > 0:
            raise ValueError(f"unit_positions.units_per_token must be > 0 (or null: counted), got {self.units_per_token}")

    @property
    def scaled(self) -> bool:
        """True for text_scaled positions."""
        return self.kind == "text_scaled"


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


def text_scaled_positions(positions: Tensor, input_ids: Tensor, scaled_rows: Tensor, unit_counts: Tensor,
                          audio_start_id: int) -> Tensor:
    """`positions` (B, T) with the units of `scaled_rows` spread over their text (see the module docstring).

    Args:
        positions: (B, T) float, consecutive positions of the rows (`_consecutive`); not modified.
        input_ids: (B, T) long: each scaled row is a TTS layout whose first <audio_start> ends its text.
        scaled_rows: (B,) bool, the TTS rows.
        unit_counts: (B,) float, M of each scaled row: units, <audio_end> excluded (true or estimated).
        audio_start_id: the id of <audio_start>.
    """
    positions = positions.clone()
    for i in scaled_rows.nonzero().flatten().tolist():
        starts = (input_ids[i] == audio_start_id).nonzero().flatten()
        if starts.numel() == 0:
            raise ValueError(f"row {i} is scaled as TTS but holds no <audio_start>")
        seq = positions[i]
        audio_start = seq[starts[0]]
        text_tokens = float(audio_start) - TTS_TEXT_START  # L
        if text_tokens < 1:
            continue
        step = text_tokens / (float(unit_counts[i]) + 1.0)  # text tokens per unit
        k = seq - audio_start  # 0 at <audio_start>, the query of U_0
        positions[i] = torch.where(seq >= audio_start, TTS_TEXT_START + (k + 0.5) * step, seq)
    return positions


def unit_decoding_positions(prompt: dict, units_per_token: float, audio_start_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Positions for `decoding.generation.generate` after left-padded TTS prompts (each ending with <audio_start>):
    the prompt's positions (B, T), and per row the first generated unit's position and the step between units, for
    M = units_per_token x L units."""
    consecutive = _consecutive(prompt["attention_mask"])
    text_tokens = (consecutive[:, -1] - TTS_TEXT_START).clamp(min=0)  # (B,) L: <audio_start> is the last column
    unit_counts = units_per_token * text_tokens
    rows = torch.ones_like(text_tokens, dtype=torch.bool)
    positions = text_scaled_positions(consecutive, prompt["input_ids"], rows, unit_counts, audio_start_id)
    step = torch.where(text_tokens >= 1, text_tokens / (unit_counts + 1.0), torch.ones_like(text_tokens))
    return positions, positions[:, -1] + step, step


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
    batch: dict,
    config: TranscriptPositionsConfig,
    jitter_seed: int | None = None,
    units: UnitPositionsConfig | None = None,
    audio_start_id: int | None = None,
) -> Tensor | None:
    """Training positions of a collated batch: None (all consecutive), or audio_scaled ASR rows (`config`) and
    text_scaled TTS rows (`units`, whose <audio_start> is `audio_start_id`) from their true lengths, each scaled by
    a jitter factor from a generator seeded with `jitter_seed` (None: no jitter)."""
    units = units or UnitPositionsConfig()
    if not (config.scaled or units.scaled):
        return None
    targets = ((batch["labels"] != IGNORE_INDEX).sum(dim=1) - 1).clamp(min=0).float()  # (B,) <eos>/<audio_end> excluded
    draws = torch.zeros_like(targets)  # (B,) in [-1, 1): one per row, each row is either ASR or TTS
    if jitter_seed is not None:
        generator = torch.Generator().manual_seed(jitter_seed)
        draws = (2 * torch.rand(targets.shape[0], generator=generator) - 1).to(targets.device)
    positions = _consecutive(batch["attention_mask"])
    if config.scaled:
        is_asr = batch["task_ids"] == TASKS.index("asr")  # (B,)
        lengths = targets * (1 + config.length_jitter * draws)
        positions = audio_scaled_positions(batch["attention_mask"], batch["feature_mask"], is_asr, lengths)
    if units.scaled:
        if audio_start_id is None:
            raise ValueError("text_scaled unit positions need the id of <audio_start>")
        is_tts = batch["task_ids"] == TASKS.index("tts")  # (B,)
        counts = targets * (1 + units.length_jitter * draws)
        positions = text_scaled_positions(positions, batch["input_ids"], is_tts, counts, audio_start_id)
    return positions

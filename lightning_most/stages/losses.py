"""The training losses of a stage: masked next-token loss per task, and CTC on the audio encoder.

The MoE aux loss comes with the backbone's output (`BackboneOutput.aux_loss`) and is added as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_most.backbone import next_token_loss
from lightning_most.batch import IGNORE_INDEX, TASKS


@dataclass
class CTCConfig:
    """A CTC loss on the audio encoder's output against ASR transcripts (YAML: `model.init_args.ctc`)."""

    weight: float = 0.0
    """Weight of the CTC loss in the total (needs `backbone_overrides.audio_encoder.ctc_head`); 0 = none, as in MoST
    (frozen HuBERT input)."""
    warmup_steps: int = 0
    """The first N steps train only the audio projection, encoder and CTC head, on the batches' ASR rows (the decoder
    is not run): a from-scratch model pre-trains its own speech encoder where MoST starts from a pretrained HuBERT.
    Under DDP set find_unused_parameters."""

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"ctc.weight must be >= 0, got {self.weight}")
        if self.warmup_steps < 0:
            raise ValueError(f"ctc.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps > 0 and self.weight <= 0:
            raise ValueError(f"ctc.warmup_steps={self.warmup_steps} trains the CTC head: set ctc.weight > 0")


def task_losses(logits: Tensor, labels: Tensor, task_ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean next-token loss over all targets, and the token-mean loss of each task in the batch.

    Args:
        logits: (B, T, V) backbone logits.
        labels: (B, T) target ids, IGNORE_INDEX where there is no loss.
        task_ids: (B,) index of each row's task in `TASKS`.
    """
    per_token = next_token_loss(logits, labels, reduction="none").view_as(labels)  # (B, T)
    is_target = labels != IGNORE_INDEX
    loss = per_token.sum() / is_target.sum().clamp(min=1)
    per_task = {}
    for t in task_ids.unique().tolist():
        rows = task_ids == t
        per_task[TASKS[t]] = per_token[rows].sum() / is_target[rows].sum().clamp(min=1)
    return loss, per_task


def asr_segments(batch: dict) -> Tensor:
    """(R,) bool: which audio segments (the rows with frames, in order) belong to ASR rows."""
    has_frames = batch["feature_mask"].any(dim=1)  # (B,)
    return batch["task_ids"][has_frames] == TASKS.index("asr")


def ctc_loss(
    batch: dict, ctc_logits: Tensor | None, ctc_lengths: Tensor | None, blank: int, num_tokens: int
) -> Tensor | None:
    """Mean per-token CTC loss of the ASR rows' encoder output against their transcripts (None without any).

    Args:
        batch: the collated batch.
        ctc_logits: (R, L, V + 1) CTC logits of the batch's R audio segments.
        ctc_lengths: (R,) frames of each segment.
        blank: the blank id (V, the text vocabulary size).
        num_tokens: transcript ids are below this (the tokenizer's base vocabulary: no <eos>).
    """
    if ctc_logits is None or ctc_lengths is None:
        return None
    is_asr = asr_segments(batch)  # (R,)
    if not bool(is_asr.any()):
        return None
    labels = batch["labels"][batch["feature_mask"].any(dim=1)][is_asr]  # (R_asr, T)
    is_text = (labels != IGNORE_INDEX) & (labels < num_tokens)  # transcript tokens, no <eos>
    log_probs = ctc_logits[is_asr].float().log_softmax(-1).transpose(0, 1)  # (L, R_asr, V + 1)
    return torch.nn.functional.ctc_loss(
        log_probs, labels[is_text], ctc_lengths[is_asr], is_text.sum(dim=1),
        blank=blank, reduction="mean", zero_infinity=True,
    )

"""`BidirectionalAudioEncoder`: trainable bidirectional context over each utterance's projected audio frames.

(Not to be confused with `lightning_most.audio.WaveformEncoder`, the frozen waveform -> features step
before the model: this encoder is part of the backbone, configured by `ModelConfig.audio_encoder`.)

MoST feeds the decoder frozen HuBERT features, which already carry phonetic context from a
bidirectional transformer. A model trained from scratch on log-mel frames (the quickstart) has no
such context: each projected frame sees only itself until the causal decoder, which must then learn
acoustics, alignment and language at once. This encoder sits between the input projection and the
decoder: residual depthwise-convolution blocks (local context) then pre-norm transformer layers
(bidirectional, within one utterance). With no layers (the default) it is not built and frames pass
straight from the projection to the decoder, as in the paper.

Frames arrive flat, as the backbone receives them: (N, d) in row-major (B, T) order, one contiguous
audio segment per row that has frames (every layout of `layouts.py` has at most one). `pad_segments`
turns them into a padded (R, L, d) batch of the R rows with frames; `unpad_segments` goes back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_most.config import AudioEncoderConfig


def pad_segments(frames: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Flat frames (N, d) with per-segment counts (R,) -> padded (R, L, d) and its padding mask (R, L), True = pad."""
    segments = torch.split(frames, counts.tolist())
    padded = nn.utils.rnn.pad_sequence(list(segments), batch_first=True)  # (R, L, d)
    is_pad = torch.arange(padded.shape[1], device=frames.device)[None] >= counts[:, None]  # (R, L)
    return padded, is_pad


def unpad_segments(padded: Tensor, is_pad: Tensor) -> Tensor:
    """Inverse of `pad_segments`: (R, L, d) -> flat (N, d) in the same order."""
    return padded[~is_pad]


class ConvBlock(nn.Module):
    """Pre-norm depthwise convolution over time, then a gated pointwise projection, with a residual."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.gate_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, is_pad: Tensor) -> Tensor:
        """x (R, L, d), is_pad (R, L) -> (R, L, d); padded frames stay zero and do not leak into real ones."""
        h = self.norm(x).masked_fill(is_pad[..., None], 0.0)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)  # (R, L, d)
        value, gate = self.gate_value(F.gelu(h)).chunk(2, dim=-1)
        return (x + self.out(value * torch.sigmoid(gate))).masked_fill(is_pad[..., None], 0.0)


class BidirectionalAudioEncoder(nn.Module):
    """Conv blocks then bidirectional transformer layers over each audio segment (see the module docstring)."""

    def __init__(self, hidden_size: int, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.convs = nn.ModuleList(ConvBlock(hidden_size, config.kernel_size) for _ in range(config.num_conv_layers))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden_size, config.num_heads, config.ffn_multiplier * hidden_size, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, frames: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Flat projected frames (N, d) and frames per segment (R,) -> encoded flat (N, d) and padded (R, L, d)."""
        x, is_pad = pad_segments(self.input_dropout(frames), counts)
        for block in self.convs:
            x = block(x, is_pad)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=is_pad)
        x = self.norm(x)
        return unpad_segments(x, is_pad), x

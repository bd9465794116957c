"""ASR input features: waveform -> frames (T, F) as the model reads them, in training and at inference.

`FeatureConfig.kind`: "fbank", lhotse's Kaldi-compatible log-mel fbank computed on the fly (100 Hz);
"whisper", the states of a frozen Whisper encoder (`encoders.WhisperEncoder`, 50 Hz); "hubert", one
hidden layer of a frozen HuBERT (`encoders.HubertEncoder`, 50 Hz, layer set by `hubert_layer`); or
"precomputed", features some other tool stored with the cuts (the data module reads them, nothing
here computes them). Whisper and HuBERT states are computed on the fly, or read when
`datamodules.encoder_features` stored them with the cuts once per corpus. In every case `frame_stack` consecutive frames are
concatenated (`stack_frames`), so F = num_features * frame_stack at frame_rate / frame_stack.
`InputFeatures` is the waveform -> frames step; the data module (`datamodules.dataset`) and
`inference` both call it, so a checkpoint hears at inference exactly what it heard in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from lhotse import Fbank, FbankConfig
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.encoders import (
    HubertEncoder,
    HubertEncoderConfig,
    WhisperEncoder,
    WhisperEncoderConfig,
    hubert_min_samples,
    hubert_num_frames,
    read_hubert_config,
)

FEATURE_KINDS = ("fbank", "whisper", "hubert", "precomputed")


@dataclass
class FeatureConfig:
    """Continuous input features of the ASR task."""

    kind: str = "fbank"
    """`fbank`: lhotse log-mel fbank on the fly (100 Hz); `whisper` / `hubert`: frozen Whisper encoder states /
    HuBERT layer states (50 Hz), stored or on the fly; `precomputed`: the features stored with each cut."""
    num_mel_bins: int = 80
    """Mel bands of the on-the-fly fbank."""
    frame_stack: int = 1
    """Consecutive frames concatenated into one input position (2: 100 Hz -> 50 Hz, F doubles)."""
    dither: float = 0.0
    """Fbank dither (0 keeps features deterministic)."""
    whisper_path: str | None = None
    """kind='whisper': a local CTranslate2 Whisper folder; None = the bundled Whisper tiny.en."""
    whisper_compute_type: str = "int8"
    """kind='whisper': CTranslate2 compute type of the encoder."""
    hubert_path: str | None = None
    """kind='hubert': local folder of a transformers HubertModel (`save_pretrained`: config.json + weights)."""
    hubert_layer: int = 11
    """kind='hubert': the hidden layer read (0 = the input of the first layer); 11 is the layer of SpiritLM's units."""
    hubert_device: str = "cpu"
    """kind='hubert': where the encoder runs (`cuda` to store a corpus's states on a GPU)."""

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"FeatureConfig.kind={self.kind!r}: use one of {FEATURE_KINDS}.")
        if self.kind == "hubert" and not self.hubert_path:
            raise ValueError(
                "FeatureConfig.kind='hubert' needs `hubert_path`: a local folder written by HubertModel.save_pretrained."
            )
        if self.frame_stack < 1:
            raise ValueError(f"FeatureConfig.frame_stack must be >= 1, got {self.frame_stack}.")


FBANK_WINDOW, FBANK_SHIFT = 400, 160  # lhotse Fbank defaults at 16 kHz: 25 ms window, 10 ms shift (snip_edges)


class InputFeatures:
    """Waveform -> input frames (T, F) of a `FeatureConfig` ("fbank", "whisper" or "hubert"), before frame stacking.

    The Whisper and HuBERT encoders are loaded on first use, so a dataset copied into DataLoader workers
    loads one per worker (Whisper with one CTranslate2 thread each: the workers are the parallelism).
    The HuBERT frame layout (width, frame count) is read from its config.json without loading weights.
    """

    def __init__(self, config: FeatureConfig, num_threads: int = 1) -> None:
        if config.kind == "precomputed":
            raise ValueError("FeatureConfig.kind='precomputed' features cannot be computed from audio")
        self.config = config
        self.num_threads = num_threads
        self.fbank = Fbank(FbankConfig(num_filters=config.num_mel_bins, dither=config.dither))
        self._whisper = None
        self._hubert = None
        self._hubert_config = read_hubert_config(config.hubert_path) if config.kind == "hubert" else None

    @property
    def whisper(self) -> WhisperEncoder:
        """The frozen `WhisperEncoder` of kind='whisper' (loaded on first use)."""
        if self._whisper is None:
            self._whisper = WhisperEncoder(WhisperEncoderConfig(
                path=self.config.whisper_path, compute_type=self.config.whisper_compute_type,
                num_threads=self.num_threads,
            ))
        return self._whisper

    @property
    def hubert(self) -> HubertEncoder:
        """The frozen `HubertEncoder` of kind='hubert' (loaded on first use)."""
        if self._hubert is None:
            c = self.config
            self._hubert = HubertEncoder(HubertEncoderConfig(path=c.hubert_path, layer=c.hubert_layer, device=c.hubert_device))
        return self._hubert

    @property
    def num_features(self) -> int:
        """F of one frame before stacking."""
        if self.config.kind == "hubert":
            return self._hubert_config.hidden_size
        return self.whisper.feature_dim if self.config.kind == "whisper" else self.config.num_mel_bins

    @property
    def min_samples(self) -> int:
        """Shortest waveform that gives `frame_stack` frames."""
        stack = self.config.frame_stack
        if self.config.kind == "whisper":
            return stack * WhisperEncoder.MEL_HOP * WhisperEncoder.STRIDE  # no model load for a constant
        if self.config.kind == "hubert":
            return hubert_min_samples(self._hubert_config, stack)
        return FBANK_WINDOW + (stack - 1) * FBANK_SHIFT

    def encoder_frames(self, num_samples: int) -> int:
        """Encoder states (before stacking) of kind 'whisper' or 'hubert' for `num_samples` samples, without encoding."""
        if self.config.kind == "whisper":
            return WhisperEncoder.frames_for(num_samples)
        if self.config.kind == "hubert":
            return hubert_num_frames(self._hubert_config, num_samples)
        raise ValueError(f"FeatureConfig.kind={self.config.kind!r} has no frozen encoder")

    def __getstate__(self) -> dict:
        # CTranslate2 models do not pickle and a HuBERT is large: DataLoader workers load their own encoder.
        return {**self.__dict__, "_whisper": None, "_hubert": None}

    def __call__(self, audio: np.ndarray) -> Tensor:
        """(S,) float32 at 16 kHz -> (T, F) float32."""
        if self.config.kind == "whisper":
            return self.whisper(torch.from_numpy(audio))
        if self.config.kind == "hubert":
            return self.hubert(torch.from_numpy(audio))
        return torch.from_numpy(self.fbank.extract(audio, SAMPLE_RATE))


def stack_frames(features: Tensor, stack: int) -> Tensor:
    """Concatenate `stack` consecutive frames: (T, F) -> (T // stack, F * stack), remainder dropped."""
    T, F = features.shape
    return features[: T // stack * stack].reshape(T // stack, F * stack)

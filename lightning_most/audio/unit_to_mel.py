"""A unit-to-mel vocoder: units (T,) -> log-mel frames (T, n_mels * stack) -> Griffin-Lim waveform.

Units clustered on a pretrained encoder's states (e.g. the frozen Whisper encoder, `datamodules.whisper_units`)
are phonetic and largely speaker independent, so their k-means centroids are no spectrum to invert.
`UnitToMel` learns the spectrum instead: a unit embedding plus a speaker embedding, then residual
1-D convolutions (optionally dilated; each frame sees `UnitToMelConfig.receptive_field` units), then a linear
layer to the `FbankEncoder` log-mel of the frame (`stack` 10 ms frames per unit). Trained with L1 on the
corpus's own log-mels (`train_unit_to_mel.py`), it speaks any units in one of the training speakers'
voices; `UnitToMelVocoder` inverts its log-mel with Griffin-Lim (`vocoder.LogMelInverse`).

A vocoder folder holds `unit_to_mel.json` (`UnitToMelConfig`, with the speakers and the default one)
and `unit_to_mel.safetensors` (the weights).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.encoders import FbankEncoderConfig
from lightning_most.audio.vocoder import LogMelInverse

UNIT_TO_MEL_CONFIG, UNIT_TO_MEL_WEIGHTS = "unit_to_mel.json", "unit_to_mel.safetensors"


@dataclass
class UnitToMelConfig:
    """Shape of a `UnitToMel` network and the log-mel it predicts."""

    num_units: int
    """K, the unit vocabulary."""
    speakers: tuple[str, ...] = ("speaker",)
    """Speaker names of the training data, one embedding each."""
    speaker: str | None = None
    """The voice the vocoder speaks in; None = the first of `speakers`."""
    width: int = 256
    """Channels of the embeddings and convolutions."""
    num_layers: int = 5
    kernel_size: int = 5
    """Units seen by each convolution (odd)."""
    dilation_cycle: int = 1
    """Layer i convolves with dilation 2 ** (i % dilation_cycle): 1 = plain convolutions; 4 = dilations 1, 2, 4, 8
    repeated, which widens the context (`receptive_field`) at the same cost."""
    dropout: float = 0.1
    fbank: FbankEncoderConfig = field(default_factory=FbankEncoderConfig)
    """The log-mel settings of the targets: one unit = `fbank.stack` frames of `fbank.num_mel_bins` mels."""

    def __post_init__(self) -> None:
        if isinstance(self.fbank, dict):
            self.fbank = FbankEncoderConfig(**self.fbank)
        self.speakers = tuple(self.speakers)
        if not self.speakers:
            raise ValueError("UnitToMelConfig.speakers is empty: name at least one training speaker")
        if self.speaker is not None and self.speaker not in self.speakers:
            raise ValueError(f"UnitToMelConfig.speaker={self.speaker!r} is not one of the speakers {self.speakers}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"UnitToMelConfig.kernel_size must be odd (same-length convolutions), got {self.kernel_size}")
        if self.dilation_cycle < 1:
            raise ValueError(f"UnitToMelConfig.dilation_cycle must be >= 1, got {self.dilation_cycle}")

    @property
    def dilations(self) -> tuple[int, ...]:
        """The dilation of each convolution."""
        return tuple(2 ** (i % self.dilation_cycle) for i in range(self.num_layers))

    @property
    def receptive_field(self) -> int:
        """Units that decide one output frame."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    @property
    def frame_dim(self) -> int:
        """Log-mel values per unit: num_mel_bins * stack."""
        return self.fbank.num_mel_bins * self.fbank.stack

    def speaker_id(self, speaker: str | None = None) -> int:
        """Index of `speaker` (default: the configured voice)."""
        name = speaker or self.speaker or self.speakers[0]
        if name not in self.speakers:
            raise ValueError(f"unknown speaker {name!r}; the unit-to-mel model knows {self.speakers}")
        return self.speakers.index(name)


class UnitToMel(nn.Module):
    """Units (B, T) + speaker ids (B,) -> log-mel frames (B, T, num_mel_bins * stack)."""

    def __init__(self, config: UnitToMelConfig) -> None:
        super().__init__()
        self.config = config
        d, k = config.width, config.kernel_size
        self.unit_embedding = nn.Embedding(config.num_units, d)
        self.speaker_embedding = nn.Embedding(len(config.speakers), d)
        self.convs = nn.ModuleList(nn.Conv1d(d, d, k, padding=k // 2 * r, dilation=r) for r in config.dilations)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(d, config.frame_dim)

    def forward(self, units: Tensor, speakers: Tensor) -> Tensor:
        """Log-mel of every unit: units (B, T) long, speakers (B,) long -> (B, T, frame_dim)."""
        return self.decode(self.unit_embedding(units), speakers)

    def decode(self, unit_embeddings: Tensor, speakers: Tensor) -> Tensor:
        """Log-mel from unit embeddings (B, T, d) (a learnt quantizer trains through this) -> (B, T, frame_dim)."""
        h = unit_embeddings + self.speaker_embedding(speakers)[:, None]  # (B, T, d)
        for conv, norm in zip(self.convs, self.norms):
            h = h + self.dropout(nn.functional.gelu(norm(conv(h.transpose(1, 2)).transpose(1, 2))))  # (B, T, d)
        return self.out(h)  # (B, T, frame_dim)


def save_unit_to_mel(model: UnitToMel, folder: str | Path) -> None:
    """Write `unit_to_mel.json` and `unit_to_mel.safetensors` into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / UNIT_TO_MEL_CONFIG).write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / UNIT_TO_MEL_WEIGHTS))


def load_unit_to_mel(folder: str | Path) -> UnitToMel:
    """Read a folder written by `save_unit_to_mel` (eval mode, no gradients)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file, weights_file = folder / UNIT_TO_MEL_CONFIG, folder / UNIT_TO_MEL_WEIGHTS
    for required in (config_file, weights_file):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required} is missing: a unit-to-mel vocoder folder holds {UNIT_TO_MEL_CONFIG} and "
                f"{UNIT_TO_MEL_WEIGHTS} (python -m lightning_most prepare_units writes one)"
            )
    try:
        config = UnitToMelConfig(**json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{config_file} is not a UnitToMelConfig JSON ({e}).") from e
    model = UnitToMel(config)
    try:
        model.load_state_dict(load_file(str(weights_file)))
    except RuntimeError as e:
        raise ValueError(f"{weights_file} does not match the network described by {config_file}: {e}") from e
    return model.eval().requires_grad_(False)


@dataclass
class UnitToMelVocoderConfig:
    """Where a trained unit-to-mel model lives and how its log-mel is inverted."""

    path: str
    """Folder with unit_to_mel.json and unit_to_mel.safetensors."""
    speaker: str | None = None
    """Voice to speak in; None = the one the folder's config names."""
    n_iter: int = 32
    """Griffin-Lim iterations."""


class UnitToMelVocoder:
    """Units (T,) -> `UnitToMel` log-mel -> Griffin-Lim waveform (T * stack * hop_length,) at 16 kHz."""

    sample_rate = SAMPLE_RATE

    def __init__(self, config: UnitToMelVocoderConfig) -> None:
        self.config = config
        self.model = load_unit_to_mel(config.path)
        self.speaker_id = self.model.config.speaker_id(config.speaker)
        self.inverse = LogMelInverse(self.model.config.fbank, n_iter=config.n_iter)

    @property
    def num_units(self) -> int:
        """K, the units the model knows."""
        return self.model.config.num_units

    @torch.no_grad()
    def log_mel(self, units: Tensor) -> Tensor:
        """The predicted log-mel of units (T,) long -> (T, num_mel_bins * stack)."""
        K = self.num_units
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= K):
            raise ValueError(
                f"unit ids must lie in [0, {K}) for {self.config.path}, got [{int(units.min())}, {int(units.max())}]"
            )
        return self.model(units.long()[None], torch.tensor([self.speaker_id]))[0]

    @torch.no_grad()
    def __call__(self, units: Tensor) -> Tensor:
        """Vocode units (T,) long -> waveform (T * stack * hop_length,) float at 16 kHz."""
        if units.numel() == 0:
            return torch.zeros(0)
        return self.inverse(self.log_mel(units))

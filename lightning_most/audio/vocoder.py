"""Vocoders: discrete units (T,) -> 16 kHz waveform (S,).

- `GriffinLimVocoder`, the offline default, needs no trained network: each unit becomes its k-means
  centroid, which for units fit on `FbankEncoder` frames is a stacked log-mel vector; the frames are
  un-stacked, mapped back to a linear power spectrogram by torchaudio's `InverseMelScale` and given a
  phase by Griffin-Lim. T units at 50 Hz give exactly T * 320 samples.
- `UnitHifiganVocoder`: speechbrain's `UnitHifiganGenerator` read from a folder holding `config.json`
  (the generator's constructor arguments, `UnitHifiganConfig`) and `generator.ckpt` (its state dict,
  loaded with `weights_only=True`). `train_vocoder.py` writes such folders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torchaudio
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.encoders import FbankEncoderConfig
from lightning_most.audio.quantizer import UnitQuantizer
from lightning_most.safe_loading import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint

CONFIG_FILE, WEIGHTS_FILE = "config.json", "generator.ckpt"
MIN_HIFIGAN_UNITS = 4  # the generator's first convolution reflect-pads 3 frames on each side


class Vocoder(Protocol):
    """What generation and evaluation need from a vocoder."""

    sample_rate: int

    def __call__(self, units: Tensor) -> Tensor: ...  # (T,) long -> (S,) float


@dataclass
class GriffinLimVocoderConfig:
    """How to invert the units' log-mel centroids."""

    fbank: FbankEncoderConfig = field(default_factory=FbankEncoderConfig)
    """The log-mel settings the units' encoder used (must match, or the inversion is meaningless)."""
    n_iter: int = 32
    """Griffin-Lim iterations: more is slower and slightly cleaner."""
    momentum: float = 0.99

    def __post_init__(self) -> None:
        if isinstance(self.fbank, dict):
            self.fbank = FbankEncoderConfig(**self.fbank)


class LogMelInverse:
    """Log-mel frames (T, n_mels * stack) of `FbankEncoder` -> linear spectrogram -> Griffin-Lim waveform."""

    def __init__(self, fbank: FbankEncoderConfig, n_iter: int = 32, momentum: float = 0.99) -> None:
        self.fbank, self.n_iter, self.momentum = fbank, n_iter, momentum
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=fbank.n_fft // 2 + 1,
            n_mels=fbank.num_mel_bins,
            sample_rate=SAMPLE_RATE,
            f_min=fbank.f_min,
            f_max=fbank.f_max,
            driver="gelsd",  # least squares that tolerates rank-deficient filterbanks
        )
        self.window = torch.hann_window(fbank.n_fft)

    @torch.no_grad()
    def __call__(self, log_mel: Tensor) -> Tensor:
        """Invert log-mel frames (T, n_mels * stack) -> waveform (T * stack * hop_length,) float at 16 kHz."""
        fbank = self.fbank
        T = log_mel.shape[0]
        log_mel = log_mel.float().reshape(-1, fbank.num_mel_bins)  # (T * stack, n_mels)
        power = self.inverse_mel(log_mel.exp().T).clamp_min(0)  # (n_fft // 2 + 1, T * stack)
        # A centred STFT of T * stack * hop samples has one frame more than the units describe (the
        # encoder drops it when stacking): repeat the last one so Griffin-Lim sees consistent shapes.
        power = torch.cat([power, power[:, -1:]], dim=1)  # (n_fft // 2 + 1, T * stack + 1)
        return torchaudio.functional.griffinlim(
            power,
            window=self.window,
            n_fft=fbank.n_fft,
            hop_length=fbank.hop_length,
            win_length=fbank.n_fft,
            power=2.0,
            n_iter=self.n_iter,
            momentum=self.momentum,
            length=T * fbank.stack * fbank.hop_length,
            rand_init=False,  # deterministic: the same frames always give the same audio
        )


class GriffinLimVocoder:
    """Units -> log-mel centroids -> linear spectrogram -> Griffin-Lim waveform."""

    sample_rate = SAMPLE_RATE

    def __init__(self, quantizer: UnitQuantizer, config: GriffinLimVocoderConfig | None = None) -> None:
        self.config = config or GriffinLimVocoderConfig()
        fbank = self.config.fbank
        if quantizer.feature_dim != fbank.num_mel_bins * fbank.stack:
            raise ValueError(
                f"the quantizer's centroids have dimension {quantizer.feature_dim}, but the log-mel settings give "
                f"{fbank.num_mel_bins} mels x stack {fbank.stack} = {fbank.num_mel_bins * fbank.stack}: "
                "Griffin-Lim can only invert units fit on FbankEncoder frames with the same settings."
            )
        self.quantizer = quantizer
        self.inverse = LogMelInverse(fbank, self.config.n_iter, self.config.momentum)

    def num_samples(self, num_units: int) -> int:
        """Length of the waveform for `num_units` units."""
        return num_units * self.config.fbank.stack * self.config.fbank.hop_length

    @torch.no_grad()
    def __call__(self, units: Tensor) -> Tensor:
        """Vocode units (T,) long -> waveform (T * stack * hop_length,) float at 16 kHz."""
        if units.numel() == 0:
            return torch.zeros(0)
        return self.inverse(self.quantizer.centroid_features(units))  # (T, n_mels * stack) -> (S,)


@dataclass
class UnitHifiganConfig:
    """Constructor arguments of speechbrain's `UnitHifiganGenerator` (single codebook, 50 Hz units -> 16 kHz)."""

    vocab_size: int = 500
    """Number of units K."""
    embedding_dim: int = 128
    upsample_initial_channel: int = 512
    upsample_factors: tuple[int, ...] = (5, 4, 4, 2, 2)
    """Their product is the samples per unit: 320 turns 50 Hz units into 16 kHz audio."""
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    resblock_type: str = "1"

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so a config read back equals the one written.
        self.upsample_factors = tuple(self.upsample_factors)
        self.upsample_kernel_sizes = tuple(self.upsample_kernel_sizes)
        self.resblock_kernel_sizes = tuple(self.resblock_kernel_sizes)
        self.resblock_dilation_sizes = tuple(tuple(d) for d in self.resblock_dilation_sizes)

    @property
    def samples_per_unit(self) -> int:
        """Waveform samples generated per unit."""
        n = 1
        for factor in self.upsample_factors:
            n *= factor
        return n

    def build(self):
        """A freshly initialised `UnitHifiganGenerator` with these settings."""
        from speechbrain.lobes.models.HifiGAN import UnitHifiganGenerator

        return UnitHifiganGenerator(
            in_channels=self.embedding_dim,
            out_channels=1,
            resblock_type=self.resblock_type,
            resblock_dilation_sizes=[list(d) for d in self.resblock_dilation_sizes],
            resblock_kernel_sizes=list(self.resblock_kernel_sizes),
            upsample_kernel_sizes=list(self.upsample_kernel_sizes),
            upsample_initial_channel=self.upsample_initial_channel,
            upsample_factors=list(self.upsample_factors),
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            pooling_type="sum",  # one codebook: nothing to pool
        )


def save_unit_hifigan(generator: torch.nn.Module, config: UnitHifiganConfig, folder: str | Path) -> None:
    """Write `config.json` and `generator.ckpt` (state dict) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2))
    torch.save(generator.state_dict(), folder / WEIGHTS_FILE)


def _read_config(path: Path) -> UnitHifiganConfig:
    try:
        fields = json.loads(path.read_text())
        return UnitHifiganConfig(**fields)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} is not a UnitHifiganConfig JSON ({e}).") from e


@dataclass
class UnitHifiganVocoderConfig:
    """Where a trained unit HiFi-GAN lives."""

    path: str
    """Folder with config.json and generator.ckpt, as written by train_vocoder."""
    device: str = "cpu"


class UnitHifiganVocoder:
    """A trained speechbrain `UnitHifiganGenerator`: units (T,) -> waveform (T * 320,)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, config: UnitHifiganVocoderConfig) -> None:
        self.config = config
        folder = Path(config.path)
        config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for required in (config_file, weights_file):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{required} is missing: a unit HiFi-GAN folder needs {CONFIG_FILE} and {WEIGHTS_FILE}."
                )
        self.generator_config = _read_config(config_file)
        try:
            state = load_checkpoint(weights_file)
        except (UnsafeCheckpointError, UnreadableCheckpointError) as e:
            raise ValueError(f"{weights_file} is not a readable state dict ({type(e).__name__}: {e}).") from e
        if not isinstance(state, dict):
            raise TypeError(f"{weights_file} holds a {type(state).__name__}, not a generator state dict.")
        generator = self.generator_config.build()
        try:
            generator.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{weights_file} does not match the generator described by {config_file}: {e}") from e
        generator.remove_weight_norm()
        self.generator = generator.eval().requires_grad_(False).to(config.device)

    @torch.no_grad()
    def __call__(self, units: Tensor) -> Tensor:
        """Vocode units (T,) long -> waveform (T * samples_per_unit,) float at 16 kHz."""
        K = self.generator_config.vocab_size
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= K):
            raise ValueError(
                f"unit ids must lie in [0, {K}) for {self.config.path}, got [{int(units.min())}, {int(units.max())}]"
            )
        T = units.numel()
        if T == 0:
            return torch.zeros(0)
        # Too short for the first convolution: repeat the last unit, then cut its audio off again.
        padded = torch.cat([units.long(), units[-1:].long().repeat(max(MIN_HIFIGAN_UNITS - T, 0))])
        x = padded.to(self.config.device)[None, :, None]  # (1, T', 1): one codebook
        audio = self.generator.inference(x)[0, 0].float().cpu()  # (T' * samples_per_unit,)
        return audio[: T * self.generator_config.samples_per_unit]

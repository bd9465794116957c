"""Map-style dataset: one sampled CutSet (mixed tasks) -> one `lightning_most.layouts.collate` batch.

Each cut says its task in `cut.custom["task"]` (set by the mixer, `mixing.py`) and is laid out by
the task's layout in `layouts.py`:

    asr      input features of the cut's audio, target = transcript tokens
    tts      input = transcript tokens, target = the cut's discrete units (`cut.load_units()`)
    text_lm  target = the text's tokens (recording-less cut, `text.py`)
    speech_instruct  input features of the spoken instruction, target = the response (supervision text)
    text_instruct    input = `custom["prompt"]` tokens, target = the response (recording-less cut)

Input features (`FeatureConfig.kind`): "fbank", lhotse's Kaldi-compatible log-mel fbank computed on
the fly from the audio (resampled to 16 kHz if needed); "whisper", the states of a frozen Whisper
encoder (`lightning_most.audio.WhisperEncoder`, 50 Hz), read from the cut when they are stored with
it (`encoder_features.store_whisper_features`) and computed on the fly otherwise; or "precomputed",
whatever features are stored with the cut (`cut.load_features()`, e.g. HuBERT frames). In every
case `frame_stack` consecutive frames are concatenated, so F = num_features * frame_stack at
frame_rate / frame_stack. `InputFeatures` is the waveform -> frames step, shared with inference.

`__getitem__` returns `(batch, skipped)`: `batch` is a `lightning_most.batch.Batch`, or None when
every cut of the batch was skipped; `skipped` counts the cuts dropped while loading,
per reason of `quality.py` (the loader adds them up, `loader.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig
from lhotse.cut import Cut
from lhotse.utils import compute_num_samples
from torch import Tensor

from datamodules.quality import SkipLog, cut_text
from lightning_most.audio.encoders import WhisperEncoder, WhisperEncoderConfig
from lightning_most.batch import Batch, Task
from lightning_most.layouts import (
    Example,
    asr_example,
    collate,
    speech_instruct_example,
    text_instruct_example,
    text_lm_example,
    tts_example,
)
from lightning_most.tokenizer import SpecialTokens, build_tokenizer

SAMPLE_RATE = 16000
FEATURE_KINDS = ("fbank", "whisper", "precomputed")
WHISPER_FEATURE_TYPE = "whisper_encoder"  # `Features.type` of stored Whisper encoder states


@dataclass
class FeatureConfig:
    """Continuous input features of the ASR task."""

    kind: str = "fbank"
    """`fbank`: lhotse log-mel fbank on the fly (100 Hz); `whisper`: frozen Whisper encoder states (50 Hz), stored
    or on the fly; `precomputed`: the features stored with each cut."""
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

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"FeatureConfig.kind={self.kind!r}: use one of {FEATURE_KINDS}.")
        if self.frame_stack < 1:
            raise ValueError(f"FeatureConfig.frame_stack must be >= 1, got {self.frame_stack}.")


class CutLoadError(Exception):
    """A cut whose audio, features or units cannot be loaded; `reason` is a `quality.SKIP_REASONS` key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


FBANK_WINDOW, FBANK_SHIFT = 400, 160  # lhotse Fbank defaults at 16 kHz: 25 ms window, 10 ms shift (snip_edges)


class InputFeatures:
    """Waveform -> input frames (T, F) of a `FeatureConfig` ("fbank" or "whisper"), before frame stacking.

    The Whisper encoder is loaded on first use, so a dataset copied into DataLoader workers loads one
    per worker (with one CTranslate2 thread each: the workers are the parallelism).
    """

    def __init__(self, config: FeatureConfig, num_threads: int = 1) -> None:
        if config.kind == "precomputed":
            raise ValueError("FeatureConfig.kind='precomputed' features cannot be computed from audio")
        self.config = config
        self.num_threads = num_threads
        self.fbank = Fbank(FbankConfig(num_filters=config.num_mel_bins, dither=config.dither))
        self._whisper = None

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
    def num_features(self) -> int:
        """F of one frame before stacking."""
        return self.whisper.feature_dim if self.config.kind == "whisper" else self.config.num_mel_bins

    @property
    def min_samples(self) -> int:
        """Shortest waveform that gives `frame_stack` frames."""
        stack = self.config.frame_stack
        if self.config.kind == "whisper":
            return stack * WhisperEncoder.MEL_HOP * WhisperEncoder.STRIDE  # no model load for a constant
        return FBANK_WINDOW + (stack - 1) * FBANK_SHIFT

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_whisper": None}  # CTranslate2 models do not pickle; workers load their own

    def __call__(self, audio: np.ndarray) -> Tensor:
        """(S,) float32 at 16 kHz -> (T, F) float32."""
        if self.config.kind == "whisper":
            return self.whisper(torch.from_numpy(audio))
        return torch.from_numpy(self.fbank.extract(audio, SAMPLE_RATE))


def stack_frames(features: Tensor, stack: int) -> Tensor:
    """Concatenate `stack` consecutive frames: (T, F) -> (T // stack, F * stack), remainder dropped."""
    T, F = features.shape
    return features[: T // stack * stack].reshape(T // stack, F * stack)


class MostDataset(torch.utils.data.Dataset):
    """Lays out every cut of a sampled CutSet by its task and collates them (see the module docstring)."""

    def __init__(self, tokenizer: str = "byte", features: FeatureConfig | None = None) -> None:
        self.tokenizer_name = tokenizer
        self.tokenizer = build_tokenizer(tokenizer)
        self.specials = SpecialTokens(self.tokenizer.base_vocab_size)
        self.features = features or FeatureConfig()
        self.extractor = InputFeatures(self.features) if self.features.kind != "precomputed" else None
        self.layouts: dict[Task, Callable[[Cut], Example]] = {
            Task.ASR: self._asr,
            Task.TTS: self._tts,
            Task.TEXT_LM: self._text_lm,
            Task.SPEECH_INSTRUCT: self._speech_instruct,
            Task.TEXT_INSTRUCT: self._text_instruct,
        }

    def _stored_features(self, cut: Cut) -> Tensor:
        try:
            return torch.from_numpy(np.asarray(cut.load_features(), dtype=np.float32))
        except FileNotFoundError as e:
            raise CutLoadError("missing_audio", str(e)) from e
        except Exception as e:
            raise CutLoadError("unreadable_audio", f"{type(e).__name__}: {e}") from e

    def _input_features(self, cut: Cut) -> Tensor:
        kind = self.features.kind
        if kind == "precomputed":
            if not cut.has_features:
                raise CutLoadError("missing_audio", "FeatureConfig.kind='precomputed' but the cut has no features")
            frames = self._stored_features(cut)
        elif kind == "whisper" and cut.has_features and cut.features.type == WHISPER_FEATURE_TYPE:
            # lhotse pads a stored array to round(duration / frame_shift) frames; keep the encoder's own count
            frames = self._stored_features(cut)[: WhisperEncoder.frames_for(compute_num_samples(cut.duration, SAMPLE_RATE))]
        else:
            if cut.sampling_rate != SAMPLE_RATE:
                cut = cut.resample(SAMPLE_RATE)
            frames = self.extractor(self._load_audio(cut))
        frames = stack_frames(frames, self.features.frame_stack)
        if frames.shape[0] == 0:
            raise CutLoadError("zero_length", "no feature frames")
        return frames

    @staticmethod
    def _load_audio(cut: Cut) -> np.ndarray:
        try:
            audio = cut.load_audio()  # (C, S)
        except FileNotFoundError as e:
            raise CutLoadError("missing_audio", str(e)) from e
        except Exception as e:  # lhotse surfaces corrupt audio as many exception types
            cause = e.__cause__ or e.__context__
            if isinstance(cause, FileNotFoundError) or "No such file" in str(e):
                raise CutLoadError("missing_audio", str(e)) from e
            raise CutLoadError("unreadable_audio", f"{type(e).__name__}: {e}") from e
        if audio.size == 0:
            raise CutLoadError("zero_length", "the audio has no samples")
        return audio.mean(axis=0).astype(np.float32)  # (S,)

    @staticmethod
    def _units(cut: Cut) -> Tensor:
        if not cut.has_custom("units"):
            raise CutLoadError("missing_units", "the cut has no `units` field (build them with datamodules.units)")
        try:
            units = torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64))
        except Exception as e:
            raise CutLoadError("missing_units", f"{type(e).__name__}: {e}") from e
        if units.numel() == 0:
            raise CutLoadError("zero_length", "the cut has no units")
        return units

    def _asr(self, cut: Cut) -> Example:
        text = cut_text(cut)
        return asr_example(
            self.tokenizer.encode(text),
            self.specials,
            self.specials.text_vocab_size,
            features=self._input_features(cut),
            text=text,
            cut_id=cut.id,
        )

    def _tts(self, cut: Cut) -> Example:
        text = cut_text(cut)
        units = self._units(cut)
        return tts_example(
            self.tokenizer.encode(text), units, self.specials, self.specials.text_vocab_size, text=text, cut_id=cut.id
        )

    def _text_lm(self, cut: Cut) -> Example:
        text = cut_text(cut)
        return text_lm_example(self.tokenizer.encode(text), self.specials, text=text, cut_id=cut.id)

    def _speech_instruct(self, cut: Cut) -> Example:
        response = cut_text(cut)
        return speech_instruct_example(
            self.tokenizer.encode(response),
            self.specials,
            self.specials.text_vocab_size,
            features=self._input_features(cut),
            text=response,
            cut_id=cut.id,
        )

    def _text_instruct(self, cut: Cut) -> Example:
        response, prompt = cut_text(cut), (cut.custom or {}).get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise CutLoadError("empty_text", "a text-instruct line needs a non-empty string `prompt`")
        return text_instruct_example(
            self.tokenizer.encode(prompt), self.tokenizer.encode(response), self.specials, text=response, cut_id=cut.id
        )

    def example(self, cut: Cut) -> Example:
        """Lay out one cut by its task (raises CutLoadError for a cut that cannot be loaded)."""
        task = (cut.custom or {}).get("task")
        if task not in self.layouts:
            raise ValueError(f"cut {cut.id} has task {task!r}; this dataset lays out {', '.join(sorted(self.layouts))}")
        return self.layouts[task](cut)

    def __getitem__(self, cuts: CutSet) -> tuple[Batch | None, dict[str, int]]:
        skips = SkipLog()
        examples = []
        for cut in cuts:
            try:
                examples.append(self.example(cut))
            except CutLoadError as e:
                skips.skip(cut.id, e.reason, str(e))
        batch = collate(examples, pad_id=self.specials.pad) if examples else None
        # A plain dict: the DataLoader's default_convert copies mappings with .update(), which adds Counters up.
        return batch, dict(skips.counts)

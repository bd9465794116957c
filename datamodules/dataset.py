"""Map-style dataset: one sampled CutSet (mixed tasks) -> one `lightning_most.layouts.collate` batch.

Each cut says its task in `cut.custom["task"]` (set by the mixer, `mixing.py`) and is laid out by
the task's layout in `layouts.py`:

    asr      input features of the cut's audio, target = transcript tokens
    tts      input = transcript tokens, target = the cut's discrete units (`cut.load_units()`)
    text_lm  target = the text's tokens (recording-less cut, `text.py`)

Input features (`FeatureConfig.kind`): "fbank", lhotse's Kaldi-compatible log-mel fbank computed on
the fly from the audio (resampled to 16 kHz if needed), or "precomputed", the features stored with
the cut (`cut.load_features()`, e.g. HuBERT frames written by the audio package). Either way
`frame_stack` consecutive frames are concatenated, so F = num_features * frame_stack at
frame_rate / frame_stack.

`__getitem__` returns `(batch, skipped)`: `batch` is the dict documented in `layouts.py`
(B examples, T positions, N = number of audio-frame positions, F feature dim):

    input_ids       (B, T) long    modality_ids   (B, T) long    feature_mask  (B, T) bool
    attention_mask  (B, T) bool    labels         (B, T) long    task_ids      (B,)   long
    prompt_lengths  (B,)   long    audio_features (N, F) float (only with ASR examples)
    texts           list[str]      cut_ids        list[str]

or None when every cut of the batch was skipped; `skipped` counts the cuts dropped while loading,
per reason of `quality.py` (the loader adds them up, `loader.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig
from lhotse.cut import Cut
from torch import Tensor

from datamodules.quality import SkipLog, cut_text
from lightning_most.layouts import Example, asr_example, collate, text_lm_example, tts_example
from lightning_most.tokenizer import SpecialTokens, build_tokenizer

SAMPLE_RATE = 16000


@dataclass
class FeatureConfig:
    """Continuous input features of the ASR task."""

    kind: str = "fbank"
    """`fbank`: lhotse log-mel fbank on the fly (100 Hz); `precomputed`: the features stored with each cut."""
    num_mel_bins: int = 80
    """Mel bands of the on-the-fly fbank."""
    frame_stack: int = 1
    """Consecutive frames concatenated into one input position (2: 100 Hz -> 50 Hz, F doubles)."""
    dither: float = 0.0
    """Fbank dither (0 keeps features deterministic)."""

    def __post_init__(self) -> None:
        if self.kind not in ("fbank", "precomputed"):
            raise ValueError(f"FeatureConfig.kind={self.kind!r}: use 'fbank' or 'precomputed'.")
        if self.frame_stack < 1:
            raise ValueError(f"FeatureConfig.frame_stack must be >= 1, got {self.frame_stack}.")


class CutLoadError(Exception):
    """A cut whose audio, features or units cannot be loaded; `reason` is a `quality.SKIP_REASONS` key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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
        self.fbank = Fbank(FbankConfig(num_filters=self.features.num_mel_bins, dither=self.features.dither))
        self.layouts: dict[str, Callable[[Cut], Example]] = {
            "asr": self._asr,
            "tts": self._tts,
            "text_lm": self._text_lm,
        }

    def _input_features(self, cut: Cut) -> Tensor:
        if self.features.kind == "precomputed":
            if not cut.has_features:
                raise CutLoadError("missing_audio", "FeatureConfig.kind='precomputed' but the cut has no features")
            try:
                frames = torch.from_numpy(np.asarray(cut.load_features(), dtype=np.float32))
            except FileNotFoundError as e:
                raise CutLoadError("missing_audio", str(e)) from e
            except Exception as e:
                raise CutLoadError("unreadable_audio", f"{type(e).__name__}: {e}") from e
        else:
            if cut.sampling_rate != SAMPLE_RATE:
                cut = cut.resample(SAMPLE_RATE)
            audio = self._load_audio(cut)
            frames = torch.from_numpy(self.fbank.extract(audio, SAMPLE_RATE))
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

    def example(self, cut: Cut) -> Example:
        """Lay out one cut by its task (raises CutLoadError for a cut that cannot be loaded)."""
        task = (cut.custom or {}).get("task")
        if task not in self.layouts:
            raise ValueError(f"cut {cut.id} has task {task!r}; this dataset lays out {sorted(self.layouts)}")
        return self.layouts[task](cut)

    def __getitem__(self, cuts: CutSet) -> tuple[dict | None, dict[str, int]]:
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

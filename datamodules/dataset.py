"""Map-style dataset: one sampled CutSet (mixed tasks) -> one `lightning_most.layouts.collate` batch.

Each cut says its task in `cut.custom["task"]` (set by the mixer, `mixing.py`) and is laid out by
the task's layout in `layouts.py`:

    asr      input features of the cut's audio, target = transcript tokens
    tts      input = transcript tokens, target = the cut's discrete units (`cut.load_units()`)
    text_lm  target = the text's tokens (recording-less cut, `text.py`)
    speech_instruct  input features of the spoken instruction, target = the response (supervision text)
    text_instruct    input = `custom["prompt"]` tokens, target = the response (recording-less cut)

Input features follow `lightning_most.audio.features.FeatureConfig` (shared with inference): "fbank",
"whisper" and "hubert" frames are computed from the cut's audio (resampled to 16 kHz if needed) by
`InputFeatures`, except Whisper or HuBERT states stored with the cut (`encoder_features.store_encoder_features`,
`Features.type` given by `stored_feature_type`, which names the HuBERT layer), which are read; "precomputed" reads whatever features are
stored with the cut (`cut.load_features()`).

`__getitem__` returns `(batch, skipped)`: `batch` is a `lightning_most.batch.Batch`, or None when
every cut of the batch was skipped; `skipped` counts the cuts dropped while loading,
per reason of `quality.py` (the loader adds them up, `loader.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.utils import compute_num_samples
from torch import Tensor

from datamodules.quality import SkipLog, cut_text
from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.features import FeatureConfig, InputFeatures, stack_frames
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

WHISPER_FEATURE_TYPE = "whisper_encoder"  # `Features.type` of stored Whisper encoder states
HUBERT_FEATURE_TYPE = "hubert_encoder_layer{layer}"  # `Features.type` of stored HuBERT states of one layer


def stored_feature_type(features: FeatureConfig) -> str | None:
    """`Features.type` of the encoder states `features` reads when they are stored with a cut (None: computed only)."""
    if features.kind == "whisper":
        return WHISPER_FEATURE_TYPE
    if features.kind == "hubert":
        return HUBERT_FEATURE_TYPE.format(layer=features.hubert_layer)
    return None



class CutLoadError(Exception):
    """A cut whose audio, features or units cannot be loaded; `reason` is a `quality.SKIP_REASONS` key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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
        elif cut.has_features and cut.features.type == stored_feature_type(self.features):
            # lhotse pads a stored array to round(duration / frame_shift) frames; keep the encoder's own count
            num_samples = compute_num_samples(cut.duration, SAMPLE_RATE)
            frames = self._stored_features(cut)[: self.extractor.encoder_frames(num_samples)]
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

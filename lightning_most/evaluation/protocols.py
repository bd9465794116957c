"""What the evaluation suites need from a model or a judge, as structural protocols.

Every waveform crossing these interfaces is a 1-D float tensor ``(S,)`` of mono samples at 16 kHz
(`lightning_most.audio.SAMPLE_RATE`) in [-1, 1]. The stage LightningModules implement these methods; judges (``judges.py``) implement
``Transcriber``. Suites call them in batches of ``config.batch_size`` and never look inside.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text: the model used as ASR, or an ASR judge."""

    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        """Return one transcript per 16 kHz waveform ``(S,)``, in order."""
        ...


@runtime_checkable
class Synthesizer(Protocol):
    """Text to speech: the model used as TTS."""

    def synthesize(self, texts: list[str]) -> list[Tensor]:
        """Return one waveform ``(S,)`` per text, in order."""
        ...


@runtime_checkable
class Resynthesizer(Protocol):
    """Speech to units to speech: the model's unit encoder + quantizer, then its vocoder (no language model)."""

    def resynthesize(self, waveforms: list[Tensor]) -> list[Tensor]:
        """Return each waveform ``(S,)`` spoken again from its own units, in order."""
        ...


@runtime_checkable
class AudioLikelihoodScorer(Protocol):
    """Speech language model likelihood of an utterance's discrete units."""

    def log_likelihood(self, waveforms: list[Tensor]) -> list[tuple[float, int]]:
        """Return ``(sum of unit log-probabilities, number of units)`` per waveform, in order."""
        ...


@runtime_checkable
class SpokenQuestionAnswerer(Protocol):
    """Answers a spoken question in text or in speech."""

    def answer_text(self, waveforms: list[Tensor]) -> list[str]:
        """Return one text answer per spoken question ``(S,)``."""
        ...

    def answer_speech(self, waveforms: list[Tensor]) -> list[Tensor]:
        """Return one spoken answer ``(S,)`` per spoken question ``(S,)``."""
        ...

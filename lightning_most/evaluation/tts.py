"""TTS word error rate: synthesize texts with the model, transcribe with a judge, score WER.

When the texts come from a CutSet, the judge also transcribes the cuts' own recordings, and that
WER is reported beside the model's: a TTS WER means little without the judge's WER on real audio of
the same sentences (a bad judge cannot pass for a bad model). Given a `Resynthesizer`, the judge also
hears the recordings resynthesized from their own units through the vocoder: the ceiling any TTS model
can reach with those units and that vocoder. `TtsResult.summary()` puts the three side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lhotse import CutSet
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.waveforms import to_mono_16k
from lightning_most.evaluation.asr import (
    UtteranceTranscript,
    corpus_wer,
    cut_reference,
    load_cuts_with_text,
    transcribe_in_batches,
)
from lightning_most.evaluation.protocols import Resynthesizer, Synthesizer, Transcriber


@dataclass
class TtsConfig:
    """How a TTS evaluation runs."""

    batch_size: int = 4
    """Texts passed to ``Synthesizer.synthesize`` per call."""
    judge_batch_size: int = 8
    """Waveforms passed to the judge's ``transcribe`` per call."""
    synthesis_sampling_rate: int = SAMPLE_RATE
    """Sampling rate of the synthesizer's output; resampled to 16 kHz for the judge when different."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "judge_batch_size", "synthesis_sampling_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"TtsConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TtsResult:
    """Judge WER on synthesized speech, and on the reference recordings when there were any."""

    wer: float
    """Judge WER on the model's speech against the input texts."""
    judge_reference_wer: float | None
    """Judge WER on the reference recordings of the same cuts; None when only texts were given."""
    num_reference_words: int
    utterances: list[UtteranceTranscript]
    """Per text: the text and the judge's transcript of the synthesized speech."""
    reference_utterances: list[UtteranceTranscript] = field(default_factory=list)
    """Per cut: the text and the judge's transcript of the reference recording."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Cut id -> why it was left out (reference audio failed to load, or no supervision text)."""
    judge_resynthesis_wer: float | None = None
    """Judge WER on the reference recordings spoken again from their own units; None without a resynthesizer."""
    resynthesis_utterances: list[UtteranceTranscript] = field(default_factory=list)
    """Per cut: the text and the judge's transcript of its resynthesis."""

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for reports and loggers."""
        metrics = {"wer": self.wer, "num_utterances": float(len(self.utterances))}
        if self.judge_reference_wer is not None:
            metrics["judge_reference_wer"] = self.judge_reference_wer
        if self.judge_resynthesis_wer is not None:
            metrics["judge_resynthesis_wer"] = self.judge_resynthesis_wer
        return metrics

    def summary(self) -> str:
        """One line: the judge's WER on (a) the reference audio, (b) its resynthesis, (c) the model's TTS."""
        def shown(wer: float | None) -> str:
            return "not measured" if wer is None else f"{wer:.1%}"

        return (
            f"judge WER on {len(self.utterances)} utterances: (a) reference audio {shown(self.judge_reference_wer)}, "
            f"(b) resynthesis from its own units {shown(self.judge_resynthesis_wer)}, (c) the model's TTS {shown(self.wer)}"
        )


def synthesize_in_batches(synthesizer: Synthesizer, texts: Sequence[str], config: TtsConfig) -> list[Tensor]:
    """Call ``synthesizer.synthesize`` on consecutive batches; return 16 kHz mono waveforms ``(S,)``."""
    waveforms: list[Tensor] = []
    for start in range(0, len(texts), config.batch_size):
        batch = list(texts[start : start + config.batch_size])
        answer = synthesizer.synthesize(batch)
        if len(answer) != len(batch):
            raise ValueError(
                f"{type(synthesizer).__name__}.synthesize returned {len(answer)} waveforms for "
                f"{len(batch)} texts; it must return one per text"
            )
        waveforms.extend(to_mono_16k(w.detach().cpu(), config.synthesis_sampling_rate) for w in answer)
    return waveforms


def judge_transcripts(judge: Transcriber, waveforms: Sequence[Tensor], batch_size: int) -> list[str]:
    """Judge transcripts of ``waveforms``; an empty waveform gets an empty transcript unjudged."""
    non_empty = [i for i, waveform in enumerate(waveforms) if waveform.numel() > 0]
    heard = transcribe_in_batches(judge, [waveforms[i] for i in non_empty], batch_size)
    transcripts = [""] * len(waveforms)
    for i, text in zip(non_empty, heard):
        transcripts[i] = text
    return transcripts


def _score(
    ids: Sequence[str], texts: Sequence[str], transcripts: Sequence[str]
) -> tuple[float, int, list[UtteranceTranscript]]:
    wer, num_words = corpus_wer(texts, transcripts)
    return wer, num_words, [UtteranceTranscript(i, r, h) for i, r, h in zip(ids, texts, transcripts)]


def evaluate_tts(
    synthesizer: Synthesizer,
    judge: Transcriber,
    items: CutSet | Sequence[str],
    config: TtsConfig | None = None,
    resynthesizer: Resynthesizer | None = None,
) -> TtsResult:
    """Score the judge WER of ``synthesizer`` on the texts of ``items`` (a CutSet or a list of texts); with a CutSet
    and a ``resynthesizer``, also the judge WER on the recordings resynthesized from their own units."""
    config = config or TtsConfig()
    reference_wer = resynthesis_wer = None
    reference_utterances: list[UtteranceTranscript] = []
    resynthesis_utterances: list[UtteranceTranscript] = []
    skipped: dict[str, str] = {}
    if isinstance(items, CutSet):
        cuts, reference_audio, skipped = load_cuts_with_text(items)
        if not cuts:
            raise ValueError(f"no cut could be evaluated; skipped: {skipped}")
        ids = [cut.id for cut in cuts]
        texts = [cut_reference(cut) for cut in cuts]
        heard_reference = judge_transcripts(judge, reference_audio, config.judge_batch_size)
        reference_wer, _, reference_utterances = _score(ids, texts, heard_reference)
        if resynthesizer is not None:
            resynthesized = [
                to_mono_16k(w.detach().cpu(), config.synthesis_sampling_rate)
                for start in range(0, len(reference_audio), config.batch_size)
                for w in resynthesizer.resynthesize(reference_audio[start : start + config.batch_size])
            ]
            heard = judge_transcripts(judge, resynthesized, config.judge_batch_size)
            resynthesis_wer, _, resynthesis_utterances = _score(ids, texts, heard)
    else:
        texts = list(items)
        ids = [f"text-{index:05d}" for index in range(len(texts))]
    synthesized = synthesize_in_batches(synthesizer, texts, config)
    wer, num_words, utterances = _score(ids, texts, judge_transcripts(judge, synthesized, config.judge_batch_size))
    return TtsResult(
        wer, reference_wer, num_words, utterances, reference_utterances, skipped, resynthesis_wer, resynthesis_utterances
    )

"""ASR word error rate of any Transcriber over a Lhotse CutSet with text supervisions.

Works for every prepared test set the data modules write as a CutSet (LibriSpeech test-clean and
test-other, Common Voice, VoxPopuli, the embedded test split): the reference of a cut is the text
of its supervisions joined by spaces. References and hypotheses are normalised with
``normalize_text`` and scored with torchmetrics' corpus-level ``word_error_rate`` (total edits over
total reference words, not a mean of per-utterance rates).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lhotse import CutSet
from lhotse.cut import Cut
from torch import Tensor
from torchmetrics.functional.text import word_error_rate

from lightning_most.audio.waveforms import load_cut_waveform
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.evaluation.protocols import Transcriber


@dataclass
class AsrConfig:
    """How an ASR evaluation runs."""

    batch_size: int = 8
    """Waveforms passed to ``Transcriber.transcribe`` per call."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"AsrConfig.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class UtteranceTranscript:
    """One scored utterance: its id, raw reference and raw hypothesis (before normalisation)."""

    utterance_id: str
    reference: str
    hypothesis: str


@dataclass
class AsrResult:
    """Corpus WER with the per-utterance transcripts behind it and the cuts that were skipped."""

    wer: float
    num_reference_words: int
    utterances: list[UtteranceTranscript]
    skipped: dict[str, str] = field(default_factory=dict)
    """Cut id -> why it was left out (audio failed to load, or no supervision text)."""

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for reports and loggers."""
        return {
            "wer": self.wer,
            "num_utterances": float(len(self.utterances)),
            "num_skipped": float(len(self.skipped)),
        }


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, int]:
    """Return (corpus WER, number of reference words) after normalising both sides."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(text) for text in references]
    hyps = [normalize_text(text) for text in hypotheses]
    num_words = sum(len(ref.split()) for ref in refs)
    if num_words == 0:
        raise ValueError("WER is undefined: the references hold no words after normalisation")
    return float(word_error_rate(preds=hyps, target=refs)), num_words


def transcribe_in_batches(transcriber: Transcriber, waveforms: Sequence[Tensor], batch_size: int) -> list[str]:
    """Call ``transcriber.transcribe`` on consecutive batches and check each answer's length."""
    transcripts: list[str] = []
    for start in range(0, len(waveforms), batch_size):
        batch = list(waveforms[start : start + batch_size])
        answer = transcriber.transcribe(batch)
        if len(answer) != len(batch):
            raise ValueError(
                f"{type(transcriber).__name__}.transcribe returned {len(answer)} transcripts for "
                f"{len(batch)} waveforms; it must return one per waveform"
            )
        transcripts.extend(answer)
    return transcripts


def cut_reference(cut: Cut) -> str:
    """The reference text of a cut: its supervisions' texts joined by spaces."""
    return " ".join(s.text.strip() for s in cut.supervisions if s.text and s.text.strip())


def load_cuts_with_text(cuts: Iterable[Cut]) -> tuple[list[Cut], list[Tensor], dict[str, str]]:
    """Load each cut's audio; return (kept cuts, their waveforms, skipped cut id -> reason)."""
    kept: list[Cut] = []
    waveforms: list[Tensor] = []
    skipped: dict[str, str] = {}
    for cut in cuts:
        if not cut_reference(cut):
            skipped[cut.id] = "no supervision text"
            continue
        try:
            waveforms.append(load_cut_waveform(cut))
        except Exception as error:  # noqa: BLE001 - any backend failure (missing file, bad codec) skips the cut
            skipped[cut.id] = f"audio failed to load: {type(error).__name__}: {error}"
            continue
        kept.append(cut)
    for cut_id, reason in skipped.items():
        warnings.warn(f"skipping cut {cut_id!r}: {reason}", stacklevel=2)
    return kept, waveforms, skipped


def evaluate_asr(transcriber: Transcriber, cuts: CutSet, config: AsrConfig | None = None) -> AsrResult:
    """Transcribe every cut of ``cuts`` with ``transcriber`` and score corpus WER."""
    config = config or AsrConfig()
    kept, waveforms, skipped = load_cuts_with_text(cuts)
    if not kept:
        raise ValueError(f"no cut could be evaluated; skipped: {skipped}")
    hypotheses = transcribe_in_batches(transcriber, waveforms, config.batch_size)
    references = [cut_reference(cut) for cut in kept]
    wer, num_words = corpus_wer(references, hypotheses)
    utterances = [UtteranceTranscript(c.id, r, h) for c, r, h in zip(kept, references, hypotheses)]
    return AsrResult(wer=wer, num_reference_words=num_words, utterances=utterances, skipped=skipped)

"""ASR WER: hand-computed corpus WER, batching, resampling and skipped cuts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from lhotse import CutSet, Recording, SupervisionSegment
from torch import Tensor

from lightning_most.evaluation.asr import AsrConfig, corpus_wer, evaluate_asr


def test_corpus_wer_hand_computed() -> None:
    # utterance 1: "sat"->"sit" (1 substitution), second "the" dropped (1 deletion), 6 reference words
    # utterance 2: "there" inserted (1 insertion), 2 reference words  => 3 errors / 8 words
    wer, words = corpus_wer(["the cat sat on the mat", "hello world"], ["the cat sit on mat", "hello there world"])
    assert words == 8
    assert wer == pytest.approx(3 / 8)


def test_corpus_wer_normalises_both_sides() -> None:
    wer, _ = corpus_wer(["Hello, World! It's 5 o'clock."], ["hello world it’s five o'clock"])
    assert wer == 0.0


def test_corpus_wer_rejects_empty_references() -> None:
    with pytest.raises(ValueError, match="no words"):
        corpus_wer(["?!"], ["anything"])


def _cut(path: Path, cut_id: str, text: str, seconds: float, sampling_rate: int):
    samples = (0.1 * np.sin(np.arange(int(seconds * sampling_rate)) * 0.05)).astype(np.float32)
    soundfile.write(path, samples, sampling_rate)
    recording = Recording.from_file(path, recording_id=cut_id)
    cut = recording.to_cut()
    cut.supervisions = [SupervisionSegment(cut_id, cut_id, 0.0, recording.duration, text=text)]
    return cut


class LengthTranscriber:
    """Answers with the text registered for each waveform length; records batch sizes."""

    def __init__(self, answers: dict[int, str]) -> None:
        self.answers = answers
        self.batches: list[int] = []

    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        self.batches.append(len(waveforms))
        return [self.answers[w.numel()] for w in waveforms]


def test_evaluate_asr_batches_resamples_and_skips(tmp_path: Path) -> None:
    cuts = CutSet.from_cuts(
        [
            _cut(tmp_path / "a.wav", "a", "The cat sat.", 1.0, 16000),
            _cut(tmp_path / "b.wav", "b", "Hello world", 0.5, 8000),  # resampled to 8000 samples at 16 kHz
            _cut(tmp_path / "c.wav", "c", "gone", 0.25, 16000),
            _cut(tmp_path / "d.wav", "d", "one two three", 0.75, 16000),
        ]
    )
    (tmp_path / "c.wav").unlink()
    transcriber = LengthTranscriber({16000: "the cat sat", 8000: "hello word", 12000: "one two three four"})
    with pytest.warns(UserWarning, match="'c'"):
        result = evaluate_asr(transcriber, cuts, AsrConfig(batch_size=2))
    assert transcriber.batches == [2, 1]
    assert list(result.skipped) == ["c"]
    assert [u.utterance_id for u in result.utterances] == ["a", "b", "d"]
    # 1 substitution + 1 insertion over 3 + 2 + 3 reference words
    assert result.wer == pytest.approx(2 / 8)
    assert result.metrics() == {"wer": pytest.approx(0.25), "num_utterances": 3.0, "num_skipped": 1.0}


def test_evaluate_asr_checks_transcript_count(tmp_path: Path) -> None:
    cuts = CutSet.from_cuts([_cut(tmp_path / "a.wav", "a", "text", 0.5, 16000)])

    class Silent:
        def transcribe(self, waveforms: list[Tensor]) -> list[str]:
            return []

    with pytest.raises(ValueError, match="one per waveform"):
        evaluate_asr(Silent(), cuts)


def test_asr_config_rejects_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        AsrConfig(batch_size=0)

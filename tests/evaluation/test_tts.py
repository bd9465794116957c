"""TTS WER: a flite 'model' is heard by the Whisper judge, a noise 'model' is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lhotse import CutSet, Recording, SupervisionSegment
from torch import Tensor

from lightning_most.audio.waveforms import read_wav
from lightning_most.evaluation.tts import TtsConfig, evaluate_tts

from .conftest import write_flite

TEXTS = ["glue the sheet to the dark blue background", "rice is often served in round bowls"]


class FliteSynthesizer:
    """Stands in for a good TTS model: flite (rms voice) reading the text."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch

    def synthesize(self, texts: list[str]) -> list[Tensor]:
        return [read_wav(write_flite(t, self.scratch / f"{abs(hash(t))}.wav")) for t in texts]


class NoiseSynthesizer:
    """Stands in for an untrained TTS model: 1.5 s of white noise per text."""

    def synthesize(self, texts: list[str]) -> list[Tensor]:
        generator = torch.Generator().manual_seed(0)
        return [0.1 * torch.randn(24000, generator=generator) for _ in texts]


@pytest.fixture(scope="module")
def reference_cuts(tmp_path_factory: pytest.TempPathFactory) -> CutSet:
    """Reference recordings of TEXTS in another flite voice (slt)."""
    directory = tmp_path_factory.mktemp("tts_refs")
    cuts = []
    for index, text in enumerate(TEXTS):
        recording = Recording.from_file(write_flite(text, directory / f"{index}.wav", voice="slt"), f"ref{index}")
        cut = recording.to_cut()
        cut.supervisions = [SupervisionSegment(f"ref{index}", f"ref{index}", 0.0, recording.duration, text=text)]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def test_tts_wer_good_model_and_judge_reference(whisper_judge, reference_cuts: CutSet, tmp_path: Path) -> None:
    result = evaluate_tts(FliteSynthesizer(tmp_path), whisper_judge, reference_cuts, TtsConfig(batch_size=1))
    assert [u.utterance_id for u in result.utterances] == ["ref0", "ref1"]
    assert result.wer <= 0.3, [u.hypothesis for u in result.utterances]
    assert result.judge_reference_wer is not None and result.judge_reference_wer <= 0.3
    assert set(result.metrics()) == {"wer", "judge_reference_wer", "num_utterances"}


def test_tts_wer_noise_model_is_high(whisper_judge) -> None:
    result = evaluate_tts(NoiseSynthesizer(), whisper_judge, TEXTS)
    assert result.wer >= 0.8, [u.hypothesis for u in result.utterances]
    assert result.judge_reference_wer is None and "judge_reference_wer" not in result.metrics()


class RecordingJudge:
    """Fake judge: says 'hello' and records how many waveforms it was given."""

    def __init__(self) -> None:
        self.heard = 0

    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        self.heard += len(waveforms)
        return ["hello" for _ in waveforms]


def test_empty_synthesis_is_scored_as_silence_without_the_judge() -> None:
    class HalfEmpty:
        def synthesize(self, texts: list[str]) -> list[Tensor]:
            return [torch.zeros(0) if i % 2 else torch.zeros(1600) for i, _ in enumerate(texts)]

    judge = RecordingJudge()
    result = evaluate_tts(HalfEmpty(), judge, ["hello", "hello"])
    assert judge.heard == 1
    assert [u.hypothesis for u in result.utterances] == ["hello", ""]
    assert result.wer == pytest.approx(0.5)


def test_synthesizer_output_is_resampled() -> None:
    class EightKilohertz:
        def synthesize(self, texts: list[str]) -> list[Tensor]:
            return [torch.zeros(8000) for _ in texts]

    class LengthJudge:
        def transcribe(self, waveforms: list[Tensor]) -> list[str]:
            return [str(w.numel()) for w in waveforms]

    result = evaluate_tts(EightKilohertz(), LengthJudge(), ["16000"], TtsConfig(synthesis_sampling_rate=8000))
    assert result.wer == 0.0


class EchoResynthesizer:
    """Stands in for perfect units and vocoder: the resynthesis is the recording itself."""

    def resynthesize(self, waveforms: list[Tensor]) -> list[Tensor]:
        return list(waveforms)


class NoiseResynthesizer:
    """Stands in for units nobody can understand: noise as long as each recording."""

    def resynthesize(self, waveforms: list[Tensor]) -> list[Tensor]:
        generator = torch.Generator().manual_seed(1)
        return [0.1 * torch.randn(w.numel(), generator=generator) for w in waveforms]


def test_resynthesis_is_judged_beside_reference_and_tts(whisper_judge, reference_cuts: CutSet) -> None:
    echo = evaluate_tts(NoiseSynthesizer(), whisper_judge, reference_cuts, resynthesizer=EchoResynthesizer())
    assert echo.judge_resynthesis_wer == echo.judge_reference_wer  # the same audio, the same judge
    assert [u.utterance_id for u in echo.resynthesis_utterances] == ["ref0", "ref1"]
    assert set(echo.metrics()) == {"wer", "judge_reference_wer", "judge_resynthesis_wer", "num_utterances"}
    noise = evaluate_tts(NoiseSynthesizer(), whisper_judge, reference_cuts, resynthesizer=NoiseResynthesizer())
    assert noise.judge_resynthesis_wer >= 0.8 and noise.judge_reference_wer <= 0.3
    line = noise.summary()
    assert "(a) reference audio" in line and "(b) resynthesis" in line and "(c) the model's TTS" in line
    assert f"{noise.judge_resynthesis_wer:.1%}" in line


def test_without_a_resynthesizer_it_is_not_measured(reference_cuts: CutSet) -> None:
    result = evaluate_tts(NoiseSynthesizer(), RecordingJudge(), reference_cuts)
    assert result.judge_resynthesis_wer is None and "judge_resynthesis_wer" not in result.metrics()
    assert "(b) resynthesis from its own units not measured" in result.summary()

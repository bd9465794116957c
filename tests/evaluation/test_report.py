"""Reports: JSON round trip, Markdown table, TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from lightning_most.evaluation.asr import AsrResult, UtteranceTranscript
from lightning_most.evaluation.report import EvaluationReport
from lightning_most.evaluation.spoken_lm import PairAccuracyResult, PairScore


@pytest.fixture
def report() -> EvaluationReport:
    asr = AsrResult(0.25, 8, [UtteranceTranscript("a", "the cat", "the hat")], skipped={"c": "audio failed"})
    pairs = PairAccuracyResult(
        "sWUGGY", 0.75, 0.5, 2, {"zipf_4": 0.5}, [PairScore("0/v", "zipf_4", 1, (-3.0, 2), (-4.0, 3))]
    )
    return EvaluationReport.from_results({"asr/test_clean": asr, "sWUGGY": pairs})


def test_report_round_trips_through_json(report: EvaluationReport, tmp_path: Path) -> None:
    path = report.to_json(tmp_path / "out" / "results.json")
    loaded = EvaluationReport.from_json(path)
    assert loaded == report
    assert loaded.metrics["asr/test_clean"] == {"wer": 0.25, "num_utterances": 1.0, "num_skipped": 1.0}
    assert loaded.details["sWUGGY"]["pairs"][0]["second"] == [-4.0, 3]


def test_from_json_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'metrics' key"):
        EvaluationReport.from_json(tmp_path / "x.json")


def test_markdown_table(report: EvaluationReport) -> None:
    lines = report.to_markdown().splitlines()
    assert lines[0] == "| suite | metric | value |"
    assert "| asr/test_clean | wer | 0.2500 |" in lines
    assert "| sWUGGY | num_pairs | 2 |" in lines
    assert len(lines) == 2 + 3 + 3


def test_tensorboard_scalars(report: EvaluationReport, tmp_path: Path) -> None:
    with SummaryWriter(tmp_path) as writer:
        report.log_to_tensorboard(writer, step=7)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "eval/sWUGGY/accuracy_sum" in events.Tags()["scalars"]
    (scalar,) = events.Scalars("eval/asr/test_clean/wer")
    assert (scalar.step, scalar.value) == (7, pytest.approx(0.25))

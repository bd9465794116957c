"""The checkpoint subcommands: `synthesize`, `transcribe`, `evaluate`, and their one-line errors (exit 2)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import soundfile
import torch

from datamodules.text_corpus import TextCorpusDataModule
from lightning_most.commands.evaluate import HELD_OUT_QA
from lightning_most.commands.transcribe import batches_by_length
from lightning_most.evaluation.spoken_qa_miniature import SpokenQaMiniatureConfig, build_spoken_qa_miniature
from lightning_most.main import main

if TYPE_CHECKING:
    from tests.fixtures_checkpoint import TrainedRun

pytest_plugins = ["tests.fixtures_checkpoint"]  # the shared `trained_run` fixture

SAMPLES_PER_UNIT = 320


def exit_code(argv: list[str]) -> int:
    """Run `main(argv)`; 0 when it returns, else the SystemExit code."""
    try:
        main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


@pytest.mark.parametrize("command", ["synthesize", "transcribe", "evaluate"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"python -m lightning_most {command}" in out and "--ckpt" in out


def test_transcribe_prints_one_line_per_file(trained_run: TrainedRun, capsys: pytest.CaptureFixture[str]) -> None:
    wavs = [str(path) for path in trained_run.test_wavs[:3]]
    assert exit_code(["transcribe", "--ckpt", str(trained_run.checkpoint), *wavs, "--batch_size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == wavs
    assert all(line.count("\t") == 1 for line in lines)


def test_transcribe_batches_files_of_similar_length_and_prints_them_in_order() -> None:
    waveforms = [torch.zeros(n) for n in (500, 100, 300, 200, 400)]
    assert batches_by_length(waveforms, 2) == [[1, 3], [2, 4], [0]]
    assert sorted(i for batch in batches_by_length(waveforms, 3) for i in batch) == list(range(5))


def test_synthesize_writes_16khz_wav_of_320_samples_per_unit(trained_run: TrainedRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "speech" / "hello.wav"
    argv = ["synthesize", "--ckpt", str(trained_run.checkpoint), "--text", "hello world", "--out", str(out)]
    assert exit_code([*argv, "--temperature", "1.0", "--seed", "1"]) == 0
    message = capsys.readouterr().out
    units = int(re.search(r"(\d+) units", message).group(1))
    info = soundfile.info(str(out))
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
    assert info.frames == units * SAMPLES_PER_UNIT


def test_evaluate_asr_and_spoken_lm_writes_json_markdown_and_tensorboard(
    trained_run: TrainedRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "eval"
    argv = [
        "evaluate", "--ckpt", str(trained_run.checkpoint), "--suites", "asr,spoken_lm",
        "--corpus_dir", str(trained_run.corpus_dir), "--max_utterances", "3", "--miniature_pairs", "1",
        "--out_dir", str(out_dir),
    ]  # fmt: skip
    assert exit_code(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out_dir / "evaluation.json").read_text())
    spoken_lm = [f"spoken_lm/{name}" for name in ("sWUGGY", "sBLIMP", "sStoryCloze", "tStoryCloze")]
    assert list(report["metrics"]) == ["asr/embedded_cuts_test", *spoken_lm]
    asr = report["metrics"]["asr/embedded_cuts_test"]
    assert set(asr) == {"wer", "num_utterances", "num_skipped"} and asr["num_utterances"] == 3 and asr["wer"] >= 0
    for name in spoken_lm:
        metrics = report["metrics"][name]
        assert set(metrics) == {"accuracy_sum", "accuracy_mean", "num_pairs"} and metrics["num_pairs"] == 1
        assert metrics["accuracy_sum"] in (0.0, 0.5, 1.0)
        pair = report["details"][name]["pairs"][0]
        assert pair["first"][1] > 0 and pair["first"][0] < 0  # (log-likelihood sum, units) of a real utterance
    markdown = (out_dir / "evaluation.md").read_text()
    assert markdown in printed
    assert re.search(r"ASR decoding: beam \d+, joint CTC weight [\d.]+, word LM weight", printed)  # the quickstart's
    assert "| asr/embedded_cuts_test | num_utterances | 3 |" in markdown
    assert len(markdown.splitlines()) == 2 + 3 + 4 * 3
    assert list((out_dir / "tensorboard").glob("events.out.tfevents.*"))
    built = out_dir / "cache" / "spoken_lm_miniature_1_1_1"
    stamp = (built / "lexical" / "dev" / "gold.csv").stat().st_mtime_ns
    assert exit_code([*argv, "--suites", "spoken_lm"]) == 0  # the miniature is reused, not rebuilt
    assert (built / "lexical" / "dev" / "gold.csv").stat().st_mtime_ns == stamp


def test_evaluate_tts_and_spoken_qa_with_the_whisper_judge(trained_run: TrainedRun, tmp_path: Path) -> None:
    out_dir = tmp_path / "eval"
    argv = [
        "evaluate", "--ckpt", str(trained_run.checkpoint), "--suites", "tts,spoken_qa", "--judge", "whisper",
        "--corpus_dir", str(trained_run.corpus_dir), "--max_utterances", "2", "--miniature_questions", "2",
        "--temperature", "1.0", "--out_dir", str(out_dir), "--instructions_dir", str(tmp_path / "not_built"),
    ]  # fmt: skip
    assert exit_code(argv) == 0
    metrics = json.loads((out_dir / "evaluation.json").read_text())["metrics"]
    assert set(metrics) == {
        "tts/embedded_cuts_test",
        "spoken_qa/spoken_qa_miniature/speech_to_text",
        "spoken_qa/spoken_qa_miniature/speech_to_speech",
    }
    tts = metrics["tts/embedded_cuts_test"]
    assert tts["num_utterances"] == 2 and tts["wer"] >= 0
    assert tts["judge_reference_wer"] < 0.5  # Whisper hears the flite recordings; the untrained model is the problem
    assert metrics["spoken_qa/spoken_qa_miniature/speech_to_text"]["num_questions"] == 2


def test_evaluate_spoken_qa_defaults_to_the_held_out_generated_questions(
    trained_run: TrainedRun, tmp_path: Path, capsys
) -> None:
    """With stage 2's instructions built, `--suites spoken_qa` scores their held-out test file by default."""
    built = build_spoken_qa_miniature(tmp_path / "qa", SpokenQaMiniatureConfig(num_questions=2))
    instructions = tmp_path / "instructions"
    shutil.copytree(built.parent, instructions)
    (instructions / "questions.jsonl").rename(instructions / HELD_OUT_QA)
    argv = [
        "evaluate", "--ckpt", str(trained_run.checkpoint), "--suites", "spoken_qa", "--instructions_dir",
        str(instructions), "--out_dir", str(tmp_path / "eval"),
    ]  # fmt: skip
    assert exit_code(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]
    assert metrics["spoken_qa/generated_test/speech_to_text"]["num_questions"] == 2
    assert "miniature" not in capsys.readouterr().out


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_missing_checkpoint_exits_2_naming_it(
    trained_run: TrainedRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "missing.ckpt"
    wav = str(trained_run.test_wavs[0])
    assert exit_code(["transcribe", "--ckpt", str(missing), wav]) == 2
    assert str(missing) in _error_line(capsys)
    out = tmp_path / "x.wav"
    assert exit_code(["synthesize", "--ckpt", str(missing), "--text", "hi", "--out", str(out)]) == 2
    assert str(missing) in _error_line(capsys) and not out.exists()


def test_missing_or_unreadable_audio_exits_2_naming_it(
    trained_run: TrainedRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing, garbage = tmp_path / "missing.wav", tmp_path / "garbage.wav"
    garbage.write_text("not audio")
    for wav, reason in ((missing, "does not exist"), (garbage, "cannot be read")):
        assert exit_code(["transcribe", "--ckpt", str(trained_run.checkpoint), str(wav)]) == 2
        line = _error_line(capsys)
        assert str(wav) in line and reason in line


def test_checkpoint_without_audio_io_exits_2_with_the_fix(
    trained_run: TrainedRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    checkpoint = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)
    audio_io = checkpoint.pop("audio_io")
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)
    wav = str(trained_run.test_wavs[0])
    assert exit_code(["transcribe", "--ckpt", str(stripped), wav]) == 2
    line = _error_line(capsys)
    assert str(stripped) in line and "--audio_io" in line
    audio_io_file = tmp_path / "audio_io.json"
    audio_io_file.write_text(json.dumps(audio_io))
    assert exit_code(["transcribe", "--ckpt", str(stripped), "--audio_io", str(audio_io_file), wav]) == 0


def test_a_checkpoint_whose_word_lm_text_moved_exits_2_or_decodes_without_it(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)
    lm = checkpoint["hyper_parameters"]["asr_decoding"]["word_lm"]
    assert lm["text_files"], "fit writes the data module's training text into the checkpoint"
    lm["text_files"] = [str(tmp_path / "moved" / "text_train.jsonl.gz")]
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    wav = str(trained_run.test_wavs[0])
    assert exit_code(["transcribe", "--ckpt", str(moved), wav]) == 2
    line = _error_line(capsys)
    assert "moved/text_train.jsonl.gz" in line and "--no_word_lm" in line
    assert exit_code(["transcribe", "--ckpt", str(moved), "--no_word_lm", wav]) == 0
    assert capsys.readouterr().out.startswith(wav)


def test_evaluate_bad_inputs_exit_2(trained_run: TrainedRun, tmp_path: Path, capsys) -> None:
    base = ["evaluate", "--ckpt", str(trained_run.checkpoint), "--out_dir", str(tmp_path / "eval")]
    cases = [
        (["--suites", "asr,bogus"], "bogus"),
        (["--suites", "asr", "--asr_cuts", str(tmp_path / "none.jsonl.gz")], "none.jsonl.gz"),
        (["--suites", "tts", "--corpus_dir", str(tmp_path / "no_corpus")], "prepare"),
        (["--suites", "spoken_lm", "--spoken_lm_root", str(tmp_path)], "holds none of"),
        (["--suites", "spoken_qa", "--spoken_qa_jsonl", str(tmp_path / "qa.jsonl")], "qa.jsonl"),
        (["--suites", "spoken_qa", "--answer_unit_margin", "-1"], "SpokenAnswerBudget.margin must be >= 0"),
    ]
    for extra, needle in cases:
        assert exit_code([*base, *extra]) == 2, extra
        assert needle in _error_line(capsys)
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_evaluate_a_text_only_checkpoint_on_text_and_refuse_it_audio_suites(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint whose audio_io is a text data module's (conf/pretrain_text.yaml: no quantizer, no unit encoder) is
    scored by the text suite; an audio suite asked of it is refused in one line naming the suite and why."""
    checkpoint = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)
    checkpoint["audio_io"] = TextCorpusDataModule(corpus_dir=str(tmp_path / "text")).audio_io()
    assert checkpoint["audio_io"]["unit_quantizer"] is None and not checkpoint["audio_io"]["unit_encoder"]
    text_only = tmp_path / "text_only.ckpt"
    torch.save(checkpoint, text_only)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text('{"text": "hello world"}\n{"text": "the cat sat on the mat"}\n')
    base = ["evaluate", "--ckpt", str(text_only), "--out_dir", str(tmp_path / "eval")]
    assert exit_code([*base, "--suites", "text", "--text_jsonl", str(held_out)]) == 0
    metrics = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]
    assert list(metrics) == ["text/held_out"]
    text = metrics["text/held_out"]
    assert text["num_texts"] == 2 and text["num_tokens"] == len("hello world") + len("the cat sat on the mat") + 2
    assert 1 < text["perplexity"] < float("inf")
    capsys.readouterr()
    (tmp_path / "eval" / "evaluation.json").unlink()
    assert exit_code([*base, "--suites", "text,asr,spoken_qa", "--text_jsonl", str(held_out)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --suites asr,spoken_qa: checkpoint {text_only} was trained on text only")
    assert "asr: it transcribes recordings" in line and "spoken_qa: it hears spoken questions" in line
    assert "--suites text" in line and not (tmp_path / "eval" / "evaluation.json").exists()


def test_a_real_process_exits_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_most",
            "transcribe",
            "--ckpt",
            str(tmp_path / "no.ckpt"),
            str(tmp_path / "a.wav"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: audio file {tmp_path / 'a.wav'} does not exist"


def test_audio_longer_than_the_model_takes_is_refused_with_the_limit(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = tmp_path / "long.wav"  # 170 s: the tiny model's 4,096 positions hold 162 s of 25 Hz frames + 24 tokens
    soundfile.write(str(long), torch.zeros(170 * 16000).numpy(), 16000, subtype="PCM_16")
    assert exit_code(["transcribe", "--ckpt", str(trained_run.checkpoint), str(long)]) == 2
    line = _error_line(capsys)
    assert str(long) in line and "lasts 170 s" in line and "at most 162 s" in line and "trim 0 162" in line


def test_text_longer_than_the_model_takes_is_refused_with_the_limit(
    trained_run: TrainedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "speech.wav"
    argv = ["synthesize", "--ckpt", str(trained_run.checkpoint), "--text", "speech " * 1000, "--out", str(out)]
    assert exit_code(argv) == 2
    line = _error_line(capsys)
    assert "--text is 7000 tokens long" in line and "at most 4048" in line and not out.exists()

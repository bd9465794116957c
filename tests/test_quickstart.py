"""The README's main command, shortened to a few steps on a miniature embedded corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]

# The miniature corpus: same builder and voices as the default, a few dozen utterances, 16 units.
TINY_CORPUS = [
    "--data.init_args.corpus.num_train", "24", "--data.init_args.corpus.num_dev", "6",
    "--data.init_args.corpus.num_test", "6", "--data.init_args.corpus.num_text_train", "50",
    "--data.init_args.corpus.num_text_dev", "10", "--data.init_args.corpus.units.num_units", "16",
    "--data.init_args.corpus.units.iterations", "5",
]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The quickstart command, 4 steps, on a miniature corpus in tmp (built because it is missing)."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    cmd = [
        sys.executable, "-m", "lightning_most", "fit", "--config", "conf/quickstart.yaml",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.corpus_dir", str(tmp_path / "corpus"),
        "--model.init_args.log_routing_every_n_steps", "2", "--model.init_args.tts_max_new_tokens", "40",
        *TINY_CORPUS,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return tmp_path, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900, check=False)


def test_quickstart_command_trains_logs_and_reports(quickstart_run) -> None:
    tmp_path, run = quickstart_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"dev ASR WER: \d+\.\d+%", run.stdout), run.stdout[-2000:]
    # The judge heard the 2 dev texts the model spoke, and its WER is printed beside the ASR WER.
    assert re.search(r"dev TTS WER \(Whisper tiny.en judge on 2 spoken dev texts\): \d+\.\d+%", run.stdout)
    log_dir = Path(re.search(r"TensorBoard logs: (\S+)", run.stdout).group(1))
    last = tmp_path / "checkpoints" / "last.ckpt"  # RunCheckpoint: the same folder in every run, so a rerun resumes
    assert last.is_file() and f"last checkpoint: {last}" in run.stdout
    # The corpus was built because it was missing.
    assert (tmp_path / "corpus" / "corpus.json").is_file()
    # The word LM was counted on this corpus's training text, and the checkpoint says so.
    hparams = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"]
    lm_files = hparams["asr_decoding"]["word_lm"]["text_files"]
    assert lm_files and all(Path(f).is_file() and str(tmp_path / "corpus") in f and "_train" in f for f in lm_files)
    assert re.search(r"dev ASR WER: \d+\.\d+% \(beam \d+, joint CTC weight [\d.]+, word LM weight [\d.]+\)", run.stdout)

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "audio": 0, "histograms": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/aux_loss", "train/tokens_per_sec", "val/asr_wer", "val/loss", "val/tts_judge_wer"):
        assert tag in scalars, sorted(scalars)
    assert any(t.startswith("train/loss_") for t in scalars)  # per-task losses
    assert any(t.startswith("routing/entropy_") for t in scalars)
    assert "routing/expert_load" in events.Tags()["images"]
    assert any(t.startswith("routing/load_") for t in events.Tags()["histograms"])
    assert any(t.startswith("tts_sample/") for t in events.Tags()["audio"])


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_checkpoint_runs_validate_test_predict(quickstart_run, subcommand: str) -> None:
    tmp_path, run = quickstart_run
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = re.search(r"last checkpoint: (\S+)", run.stdout).group(1)
    limit = {"validate": "val", "test": "test", "predict": "predict"}[subcommand]
    cmd = [
        sys.executable, "-m", "lightning_most", subcommand, "--config", "conf/quickstart.yaml", "--ckpt_path", ckpt,
        "--trainer.logger", "false", f"--trainer.limit_{limit}_batches", "1",
        "--data.init_args.corpus_dir", str(tmp_path / "corpus"), *TINY_CORPUS,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    if subcommand != "predict":
        assert f"{limit}/asr_wer" in out.stdout

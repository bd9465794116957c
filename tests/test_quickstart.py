"""The README's main command, shortened to 50 steps on a miniature embedded corpus, run as a user runs it.

One run serves three checks: it trains, logs and reports; its first 50 losses equal the recorded ones;
its checkpoint runs `validate`, `test` and `predict`.

Training is unchanged by refactoring: the golden file (`tests/golden/quickstart_50_steps.json`) says
where its numbers come from. The comparison is exact, float32 bit for bit: the run is seeded, on CPU in
one process with one data worker, and its corpus is built fresh in tmp and repeatably (sox speaks with
-R: without it the 16-bit dither is random per call and two builds differ), so the same code on the
same machine gives the same numbers. Thread counts are the recording's defaults (OMP_NUM_THREADS
unset). On another CPU the features and sums round differently (its BLAS and vector kernels), so the
file keeps one recording per CPU kind and the run must equal one of them bit for bit. On a new CPU kind,
record it first, on the code before a change; after a change meant to alter training, record again:

    GOLDEN_REGENERATE=1 pytest tests/test_quickstart.py -k recorded     # this CPU's recording
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_most.main import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "quickstart_50_steps.json"
STEPS = 50

# The miniature corpus: same builder and voices as the default, a few dozen utterances, 16 units.
TINY_CORPUS = [
    "--data.init_args.corpus.num_train", "24", "--data.init_args.corpus.num_dev", "6",
    "--data.init_args.corpus.num_test", "6", "--data.init_args.corpus.num_text_train", "50",
    "--data.init_args.corpus.num_text_dev", "10", "--data.init_args.corpus.units.num_units", "16",
    "--data.init_args.corpus.units.iterations", "5",
]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The quickstart command, STEPS steps, on a miniature corpus in tmp (built because it is missing)."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    cmd = [
        sys.executable, "-m", "lightning_most", "fit", "--config", "conf/quickstart.yaml",
        "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.corpus_dir", str(tmp_path / "corpus"),
        "--model.init_args.log_routing_every_n_steps", "25", "--model.init_args.tts_max_new_tokens", "40",
        *TINY_CORPUS,
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"HF_HUB_OFFLINE": "1"}
    return tmp_path, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900, check=False)


def _events(run: subprocess.CompletedProcess) -> EventAccumulator:
    """The run's TensorBoard events, every scalar kept."""
    assert run.returncode == 0, run.stderr[-3000:]
    log_dir = Path(re.search(r"TensorBoard logs: (\S+)", run.stdout).group(1))
    return EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "audio": 0, "histograms": 0}).Reload()


def test_quickstart_command_trains_logs_and_reports(quickstart_run) -> None:
    tmp_path, run = quickstart_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"dev ASR WER: \d+\.\d+%", run.stdout), run.stdout[-2000:]
    # The judge heard the dev texts the model spoke (up to num_judged_samples = 20; the one dev batch of this run
    # holds a single ASR row), and its WER is printed beside the ASR WER with the count it really heard.
    judged = re.search(r"dev TTS WER \(Whisper tiny.en judge on (\d+) spoken dev texts\): \d+\.\d+%", run.stdout)
    assert judged and 1 <= int(judged.group(1)) <= 20, run.stdout[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"  # RunCheckpoint: the same folder in every run, so a rerun resumes
    assert last.is_file() and f"last checkpoint: {last}" in run.stdout
    # The corpus was built because it was missing.
    assert (tmp_path / "corpus" / "corpus.json").is_file()
    # The word LM was counted on this corpus's training text, and the checkpoint says so.
    hparams = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"]
    lm_files = hparams["asr_decoding"]["word_lm"]["text_files"]
    assert lm_files and all(Path(f).is_file() and str(tmp_path / "corpus") in f and "_train" in f for f in lm_files)
    assert re.search(r"dev ASR WER: \d+\.\d+% \(beam \d+, joint CTC weight [\d.]+, word LM weight [\d.]+\)", run.stdout)

    events = _events(run)
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/aux_loss", "train/tokens_per_sec", "val/asr_wer", "val/loss", "val/tts_judge_wer"):
        assert tag in scalars, sorted(scalars)
    assert any(t.startswith("train/loss_") for t in scalars)  # per-task losses
    assert any(t.startswith("routing/entropy_") for t in scalars)
    assert "routing/expert_load" in events.Tags()["images"]
    assert any(t.startswith("routing/load_") for t in events.Tags()["histograms"])
    assert any(t.startswith("tts_sample/") for t in events.Tags()["audio"])


def cpu_fingerprint() -> str:
    """The CPU kind a golden recording belongs to: its model, the vector kernels torch picks, torch's version."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())  # fmt: skip
    extras = [flag for flag in ("avx512f", "avx512_fp16", "amx_tile") if f" {flag}" in cpuinfo]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.machine()} {model} {capability} {'+'.join(extras) or 'no-avx512'} torch {torch.__version__}"


def test_quickstart_first_50_losses_equal_the_recorded_ones(quickstart_run) -> None:
    _, run = quickstart_run
    scalars = _events(run).Scalars("train/loss")
    assert [s.step for s in scalars] == list(range(STEPS))
    losses = [s.value for s in scalars]
    golden = json.loads(GOLDEN.read_text())
    recordings: dict[str, list[float]] = golden["recordings"]
    if os.environ.get("GOLDEN_REGENERATE") == "1":
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        recordings = {k: v for k, v in recordings.items() if not k.startswith(cpu_fingerprint())}
        recordings[f"{cpu_fingerprint()} ({commit})"] = losses
        GOLDEN.write_text(json.dumps({**golden, "recordings": recordings}, indent=1) + "\n")
    assert all(len(recorded) == STEPS for recorded in recordings.values())
    if losses in recordings.values():
        return
    mismatches = {name: [(step, want, got) for step, (want, got) in enumerate(zip(recorded, losses)) if want != got][:3]
                  for name, recorded in recordings.items()}  # fmt: skip
    pytest.fail(f"the first {STEPS} losses equal none of the recordings (this CPU: {cpu_fingerprint()}); "
                f"(step, recorded, now) per recording: {mismatches}")


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_checkpoint_runs_validate_test_predict(quickstart_run, subcommand: str, capsys: pytest.CaptureFixture) -> None:
    tmp_path, run = quickstart_run
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = re.search(r"last checkpoint: (\S+)", run.stdout).group(1)
    limit = {"validate": "val", "test": "test", "predict": "predict"}[subcommand]
    main([
        subcommand, "--config", str(ROOT / "conf/quickstart.yaml"), "--ckpt_path", ckpt,
        "--trainer.logger", "false", f"--trainer.limit_{limit}_batches", "1",
        "--data.init_args.corpus_dir", str(tmp_path / "corpus"), *TINY_CORPUS,
    ])  # fmt: skip
    if subcommand != "predict":
        assert f"{limit}/asr_wer" in capsys.readouterr().out

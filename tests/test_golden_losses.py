"""Training is unchanged by refactoring: the quickstart's first 50 losses equal the recorded ones.

The golden file (`tests/golden/quickstart_50_steps.json`) says where its numbers come from. The
comparison is exact, float32 bit for bit: the run is seeded, on CPU in one process with one data
worker, and its corpus is built fresh in tmp and repeatably (sox speaks with -R: without it the
16-bit dither is random per call and two builds differ), so the same code on the same machine gives
the same numbers. Thread counts are the recording's defaults (OMP_NUM_THREADS unset). On another CPU
or thread count the features and sums may round differently: regenerate there first, on the code
before a change. After a change meant to alter training, regenerate too:

    GOLDEN_REGENERATE=1 pytest tests/test_golden_losses.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.test_quickstart import ROOT, TINY_CORPUS

GOLDEN = Path(__file__).parent / "golden" / "quickstart_50_steps.json"
STEPS = 50


def _train_losses(tmp_path: Path) -> list[float]:
    """`train/loss` of each of the quickstart's first STEPS steps on the miniature corpus (built in tmp_path)."""
    cmd = [
        sys.executable, "-m", "lightning_most", "fit", "--config", "conf/quickstart.yaml",
        "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.corpus_dir", str(tmp_path / "corpus"), *TINY_CORPUS,
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    (log_dir,) = (tmp_path / "tensorboard").glob("version_*")
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == list(range(STEPS))
    return [s.value for s in scalars]


def test_quickstart_first_50_losses_equal_the_recorded_ones(tmp_path: Path) -> None:
    losses = _train_losses(tmp_path)
    golden = json.loads(GOLDEN.read_text())
    if os.environ.get("GOLDEN_REGENERATE") == "1":
        GOLDEN.write_text(json.dumps({**golden, "train_loss": losses}, indent=1) + "\n")
    mismatches = [(step, want, got) for step, (want, got) in enumerate(zip(golden["train_loss"], losses)) if want != got]
    assert len(golden["train_loss"]) == STEPS and not mismatches, f"(step, recorded, now): {mismatches[:5]}"

"""A tiny trained stage-1 checkpoint (3 steps of `fit --config conf/quickstart.yaml`), made once per test run.

It trains on the session's `tiny_fit_corpus` (`tests/tiny_fit.py`'s, built once for every test that uses it).

A test module uses it with `pytest_plugins = ["tests.fixtures_checkpoint"]`: registered once as a
plugin, its session fixture `trained_run` trains once for every module that asks for it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lightning_most.main import main
from tests.tiny_fit import CORPUS

NUM_UNITS = CORPUS.units.num_units
TEXT_BUDGET, UNIT_BUDGET = 24, 40  # decoding budgets saved with the checkpoint: keeps greedy decoding to seconds


@dataclass(frozen=True)
class TrainedRun:
    """Where the tiny run wrote its checkpoint and its corpus."""

    checkpoint: Path
    corpus_dir: Path
    num_units: int = NUM_UNITS
    text_budget: int = TEXT_BUDGET
    """`asr_decoding.max_new_tokens` saved with the checkpoint."""
    unit_budget: int = UNIT_BUDGET
    """`tts_max_new_tokens` saved with the checkpoint."""

    @property
    def test_wavs(self) -> list[Path]:
        """The test split's recordings."""
        return sorted(self.corpus_dir.glob("wav/*/*-test-*.wav"))


def train_tiny_checkpoint(root: Path, corpus_dir: Path) -> TrainedRun:
    """Train the quickstart model for 3 steps on `tests/tiny_fit.py`'s corpus in `corpus_dir` (built if missing)."""
    main([
        "fit", "--config", "conf/quickstart.yaml",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
        "--model.init_args.asr_decoding.max_new_tokens", str(TEXT_BUDGET),
        "--model.init_args.tts_max_new_tokens", str(UNIT_BUDGET),
        "--data.init_args.corpus_dir", str(corpus_dir),
        "--data.init_args.corpus", json.dumps(dataclasses.asdict(CORPUS)),
    ])  # fmt: skip
    checkpoint = root / "checkpoints" / "last.ckpt"  # RunCheckpoint's folder
    if not checkpoint.is_file():
        raise FileNotFoundError(f"the tiny fit run wrote no {checkpoint}")
    return TrainedRun(checkpoint, corpus_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_fit_corpus: Path) -> TrainedRun:
    """The tiny trained run (trained on first use, 30-60 s on 2 cores)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny_run"), tiny_fit_corpus)

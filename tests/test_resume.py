"""Exact resume: a stage-1 run killed mid-epoch and resumed with `--ckpt_path` logs the same losses.

The real pipeline runs end to end: `python -m lightning_most fit` (in-process `main`), the tiny
backbone, `EmbeddedDataModule` over a tiny embedded corpus (built once per session in tmp) with a
prefetching worker, AdamW with warmup + cosine, gradient clipping. The stream is infinite, so the
whole run is one epoch and the kill lands mid-epoch: the loader position saved with the checkpoint
is part of what is tested (without it the resumed run would replay the first batches).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from datamodules.embedded import EmbeddedCorpusConfig, prepare_embedded_corpus
from datamodules.units import UnitsConfig
from lightning_most.main import main

CORPUS = EmbeddedCorpusConfig(
    num_train=24,
    num_dev=6,
    num_test=6,
    num_text_train=50,
    num_text_dev=10,
    voices=("flite_rms", "flite_slt"),  # flite speaks in milliseconds; festival voices would add seconds
    variants=((1.0, 0), (1.1, 150)),
    num_test_speakers=1,
    chunk_size=6,
    units=UnitsConfig(num_units=16, iterations=5),
)
MAX_STEPS = 8
CHECKPOINT_EVERY = 3  # checkpoints at steps 3 and 6
KILL_AT_STEP = 5  # dies while running step 6: steps 4-5 are lost, the resumed run redoes them


class KilledRun(RuntimeError):
    """Raised by `KillAtStep` to stand in for a crashed or pre-empted job."""


class StepLossRecorder(pl.Callback):
    """Records the loss (`training_step`'s return, task loss + aux) and the lr of every optimizer step."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.lrs: dict[int, float] = {}
        self.cut_ids: dict[int, list[str]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step  # already counts this batch's optimizer step
        self.losses[step] = float(outputs["loss"])
        self.lrs[step] = trainer.optimizers[0].param_groups[0]["lr"]
        self.cut_ids[step] = list(batch["cut_ids"])


class KillAtStep(pl.Callback):
    """Raises `KilledRun` as the batch after optimizer step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise KilledRun(f"killed at step {self.step}")


@pytest.fixture(scope="session")
def resume_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 36-utterance embedded corpus with 16 units."""
    out = tmp_path_factory.mktemp("resume_corpus")
    prepare_embedded_corpus(out, CORPUS)
    return out


def _config(corpus_dir: Path, root: Path, kill_at: int | None) -> Path:
    callbacks = [
        {"class_path": "tests.test_resume.StepLossRecorder"},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(root / "checkpoints"), "every_n_train_steps": CHECKPOINT_EVERY,
                          "save_last": True, "save_top_k": -1},
        },
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.test_resume.KillAtStep", "init_args": {"step": kill_at}})
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": MAX_STEPS,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 1, "gradient_clip_val": 1.0,
            "default_root_dir": str(root), "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "callbacks": callbacks,
        },
        "model": {
            "class_path": "lightning_most.stages.Stage1Module",
            "init_args": {
                "backbone": "tiny",
                "backbone_overrides": {"audio_feature_dim": 320, "num_audio_units": CORPUS.units.num_units},
                "optimizer": {"lr": 2.0e-3, "warmup_steps": 3, "weight_decay": 0.01},
                "log_routing_every_n_steps": 1000,
            },
        },
        "data": {
            "class_path": "datamodules.EmbeddedDataModule",
            "init_args": {
                "corpus_dir": str(corpus_dir),
                "corpus": _as_yaml(CORPUS),
                "features": {"num_mel_bins": 80, "frame_stack": 4},
                "loader": {"max_duration": 8.0, "max_cut_duration": 8.0, "num_buckets": 2, "buffer_size": 50,
                           "num_workers": 1},
            },
        },
    }
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _as_yaml(corpus: EmbeddedCorpusConfig) -> dict:
    """The corpus config as plain YAML values (tuples -> lists), so the data module sees the same config."""
    return json.loads(json.dumps(dataclasses.asdict(corpus)))


def _recorder(cli) -> StepLossRecorder:
    return next(c for c in cli.trainer.callbacks if isinstance(c, StepLossRecorder))


def test_killed_run_resumes_with_identical_losses(resume_corpus: Path, tmp_path: Path) -> None:
    reference = _recorder(main(["fit", "--config", str(_config(resume_corpus, tmp_path / "full", None))]))
    assert sorted(reference.losses) == list(range(1, MAX_STEPS + 1))

    killed_root = tmp_path / "killed"
    config = _config(resume_corpus, killed_root, KILL_AT_STEP)
    with pytest.raises(KilledRun):
        main(["fit", "--config", str(config)])
    last = killed_root / "checkpoints" / "last.ckpt"
    assert last.is_file()

    resumed = _recorder(main(["fit", "--config", str(_config(resume_corpus, tmp_path / "resumed", None)),
                              "--ckpt_path", str(last)]))
    steps = list(range(CHECKPOINT_EVERY + 1, MAX_STEPS + 1))
    assert sorted(resumed.losses) == steps
    # The same batches (loader position restored, not replayed from the start of the stream) ...
    assert [resumed.cut_ids[s] for s in steps] == [reference.cut_ids[s] for s in steps]
    assert reference.cut_ids[CHECKPOINT_EVERY + 1] != reference.cut_ids[1]
    # ... the same schedule (the LambdaLR state) and the same losses (weights + AdamW moments).
    assert [resumed.lrs[s] for s in steps] == pytest.approx([reference.lrs[s] for s in steps], rel=1e-12)
    assert [resumed.losses[s] for s in steps] == pytest.approx([reference.losses[s] for s in steps], rel=1e-6, abs=1e-7)
    # The losses move, so equal numbers mean something.
    assert abs(reference.losses[MAX_STEPS] - reference.losses[CHECKPOINT_EVERY + 1]) > 1e-3


def test_filling_missing_adamw_state_leaves_training_unchanged() -> None:
    from lightning_most.stages.optimizer import fill_missing_adamw_state

    torch.manual_seed(0)
    used, late = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)  # `late` gets its first gradient at step 3
    copies = [torch.nn.ModuleList([used, late]), copy.deepcopy(torch.nn.ModuleList([used, late]))]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1) for m in copies]
    x = torch.randn(8, 4)
    for step in range(4):
        for filled, (model, opt) in enumerate(zip(copies, optimizers)):
            loss = model[0](x).square().mean() + (model[1](x).square().mean() if step >= 3 else 0.0)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if filled:
                fill_missing_adamw_state(opt)
                assert len(opt.state) == 4  # the late layer's weight and bias have a (zero) state
    assert len(optimizers[0].state) == 4  # by now the plain optimizer has them too
    for a, b in zip(copies[0].parameters(), copies[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

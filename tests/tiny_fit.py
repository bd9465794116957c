"""The tiny stage-1 fit run of the resume, fault-tolerance and kill tests: its corpus, config and callbacks.

The run: tiny backbone, 36-utterance embedded corpus with 16 units (`CORPUS`), a prefetching loader
worker, AdamW with warmup and cosine, gradient clipping, checkpointed by `RunCheckpoint` into
`<root>/checkpoints` with `Preemption`, and started with `ckpt_path: last`: the same command starts it
or resumes it, in this process (`lightning_most.main.main`) or as a separate one (`fit_command`).
`StepLog` appends one JSON line per optimizer step (step, loss, learning rate, cut ids, process id) to
`<root>/steps.jsonl`, so that what each run trained can be read after it ended or was killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import yaml

from datamodules.embedded import EmbeddedCorpusConfig
from datamodules.units import UnitsConfig

CORPUS = EmbeddedCorpusConfig(
    num_train=24,
    num_dev=6,
    num_test=6,
    num_text_train=50,
    num_text_dev=10,
    voices=("flite_rms", "flite_slt"),  # flite speaks in milliseconds; festival voices would add seconds
    variants=((1.0, 0), (1.1, 150)),
    num_test_speakers=1,
    units=UnitsConfig(num_units=16, max_frames=4000, iterations=5),
)
"""The tiny run's corpus; also the one `tests/fixtures_checkpoint.py` trains on (so a session builds it once)."""
STEP_LOG = "steps.jsonl"


class StepLog(pl.Callback):
    """Appends `{"step", "loss", "lr", "cut_ids", "pid"}` to `path` after every optimizer step (flushed)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        record = {"step": trainer.global_step, "loss": float(outputs["loss"]),
                  "lr": trainer.optimizers[0].param_groups[0]["lr"], "cut_ids": list(batch["cut_ids"]), "pid": os.getpid()}
        with open(self.path, "a") as log:
            log.write(json.dumps(record) + "\n")
            log.flush()


class KilledRun(RuntimeError):
    """Raised by `KillAtStep` to stand in for a crashed or pre-empted job."""


class KillAtStep(pl.Callback):
    """Raises `KilledRun` as the batch after optimizer step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise KilledRun(f"killed at step {self.step}")


class SlowSteps(pl.Callback):
    """Sleeps `seconds` after every step (gives a signal time to arrive mid-run)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        import time

        time.sleep(self.seconds)


class NaNAtStep(pl.Callback):
    """Makes the backbone's final norm output NaN during optimizer step `step` (so its loss and gradients are NaN)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._hook = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step + 1 == self.step:
            self._hook = pl_module.backbone.norm.register_forward_hook(lambda module, args, out: out * float("nan"))

    def on_train_batch_end(self, *args) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class SaveWeights(pl.Callback):
    """Saves the backbone's weights after every optimizer step to `<folder>/weights-<step>.pt`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        import torch

        torch.save(pl_module.backbone.state_dict(), os.path.join(self.folder, f"weights-{trainer.global_step}.pt"))


def write_config(corpus_dir: Path, root: Path, max_steps: int, checkpoint_every: int, step_seconds: float = 0.0,
                 extra_callbacks: tuple[dict, ...] = (), logger: dict | bool = False) -> Path:
    """Write `<root>/run.yaml` for the tiny run and return its path (not `config.yaml`: LightningCLI writes the
    run's full config there)."""
    callbacks = [*extra_callbacks,
        {"class_path": "tests.tiny_fit.StepLog", "init_args": {"path": str(root / STEP_LOG)}},
        {"class_path": "lightning_most.fault_tolerance.Preemption"},
        {"class_path": "lightning_most.fault_tolerance.RunCheckpoint",
         "init_args": {"every_n_train_steps": checkpoint_every, "save_last": True}},
    ]
    if step_seconds:
        callbacks.append({"class_path": "tests.tiny_fit.SlowSteps", "init_args": {"seconds": step_seconds}})
    config = {
        "seed_everything": 0,
        "ckpt_path": "last",
        "weights_only": True,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": max_steps,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 1, "gradient_clip_val": 1.0,
            "default_root_dir": str(root), "logger": logger, "enable_progress_bar": False,
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
                "corpus_dir": str(corpus_dir), "corpus": json.loads(json.dumps(dataclasses.asdict(CORPUS))),
                "features": {"num_mel_bins": 80, "frame_stack": 4},
                "loader": {"max_duration": 8.0, "max_cut_duration": 8.0, "num_buckets": 2, "buffer_size": 50, "num_workers": 1},
            },
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit_command(config: Path) -> list[str]:
    """The command line that starts or resumes the run of `config` (the same every time)."""
    return [sys.executable, "-m", "lightning_most", "fit", "--config", str(config)]


def subprocess_env() -> dict[str, str]:
    """The environment of a run process: this checkout importable, 1 thread (deterministic and light)."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_steps(root: Path) -> list[dict]:
    """Every record of `<root>/steps.jsonl`, in the order written (a torn last line is dropped)."""
    path = root / STEP_LOG
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records

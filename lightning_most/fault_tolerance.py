"""Checkpoints that survive kills, a clean stop on preemption, and a guard against non-finite steps.

`RunCheckpoint` is Lightning's `ModelCheckpoint` with these changes:

- its folder defaults to `<default_root_dir>/checkpoints` (not the logger's `version_N/checkpoints`, which
  is new in every run), so running the same command again finds the run's checkpoints;
- every checkpoint is written under `<name>.partial`, flushed to disk (fsync), then renamed over the
  old one: a process killed while it writes leaves the previous checkpoint whole (a sharded FSDP2
  folder is swapped with two renames: the old folder is moved aside to `<name>.old` first, and
  removed after);
- `ckpt_path: last` resolves to the newest checkpoint of the folder that reads back whole (a zip whose
  members match their CRCs; a folder with its `.metadata` and a whole `meta.pt`), with a warning
  naming the one it skipped; and `last.ckpt` holds the final step when fit ends.

`DivergenceGuard` catches a non-finite loss or gradient norm on its step (skip and count it, or stop with
a checkpoint and a message naming the step, tasks and cut ids).

`Preemption` turns SIGTERM (torchrun, Kubernetes, SLURM at a job's end) and SLURM's requeue signal
(SIGUSR1 by default, `#SBATCH --signal=SIGUSR1@90`) into: finish the current step, save `last.ckpt`,
requeue the SLURM job (under SLURM's auto-requeue), and exit with status 128 + the signal number, so
that a scheduler reads the run as interrupted, not finished. It replaces Lightning's own handlers for
these signals during training: Lightning saves its SLURM checkpoint inside the signal handler, at any
point of a step (after some parameters were updated and before others), and a plain SIGTERM ends
Lightning's fit with status 0 and no checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import zipfile
from pathlib import Path
from types import FrameType
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_most.batch import TASKS

STAGING_SUFFIX = ".partial"  # a checkpoint being written
RETIRED_SUFFIX = ".old"  # a sharded checkpoint folder being replaced


def is_whole_checkpoint(path: str | Path) -> bool:
    """Whether `path` reads back whole: a zip whose members all match their CRCs, or a sharded folder with its
    `.metadata` and a whole `meta.pt` (the `.distcp` shards carry no checksum)."""
    path = Path(path)
    if path.is_dir():
        return (path / ".metadata").is_file() and is_whole_checkpoint(path / "meta.pt")
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _fsync(path: Path) -> None:
    """Flush a file, or every file of a folder and the folder itself, to disk."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync(child)
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def publish(staging: Path, final: Path) -> None:
    """Make the finished checkpoint `staging` (a file or folder) become `final`, its bytes on disk first."""
    _fsync(staging)
    if final.is_dir():  # a folder cannot be replaced in one rename: move the old one aside first
        retired = final.with_name(final.name + RETIRED_SUFFIX)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(final, retired)
        os.replace(staging, final)
        _fsync(final.parent)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)
        _fsync(final.parent)


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` in a fixed folder, written atomically, resumed from its newest whole checkpoint (module doc)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _default_dirpath(self, trainer: pl.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if not _is_local_file_protocol(filepath):
            return super()._save_checkpoint(trainer, filepath)
        staging = filepath + STAGING_SUFFIX
        if trainer.is_global_zero:  # what a killed write left (a sharded one could hold other ranks' files)
            _remove(Path(staging))
        trainer.strategy.barrier("RunCheckpoint.clean")
        trainer.save_checkpoint(staging, self.save_weights_only)  # every rank writes its part, then a barrier
        if trainer.is_global_zero:
            publish(Path(staging), Path(filepath))
        trainer.strategy.barrier("RunCheckpoint.publish")
        # ModelCheckpoint._save_checkpoint's bookkeeping
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        """What `ckpt_path: last` resumes from: the newest whole checkpoint of the folder (warning about newer ones
        that are not whole); none on a first run."""
        self._default_dirpath(trainer)
        folder = Path(self.dirpath)
        if not folder.is_dir():
            return set()
        candidates = [p for p in folder.iterdir() if p.name.endswith((self.FILE_EXTENSION, self.FILE_EXTENSION + RETIRED_SUFFIX))]
        skipped = []
        for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
            if is_whole_checkpoint(path):
                if skipped:
                    rank_zero_warn(
                        f"checkpoint {skipped[0]} is torn or corrupt (it does not read back whole): resuming from "
                        f"{path}, the newest whole checkpoint in {folder}"
                        + (f" (also skipped: {', '.join(map(str, skipped[1:]))})" if len(skipped) > 1 else "")
                    )
                return {str(path)}
            skipped.append(path)
        if skipped:
            rank_zero_warn(f"no checkpoint in {folder} reads back whole ({', '.join(map(str, skipped))}): starting afresh")
        return set()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave `last.ckpt` at the final step. Lightning does not when the run ends between two checkpoint steps, or
        when it resumed at its final step from a checkpoint newer than `last.ckpt` (a kill between the writes of
        `epoch=...-step=N.ckpt` and `last.ckpt`): no step is trained then, so nothing is saved."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self.save_last_now(trainer)

    def save_last_now(self, trainer: pl.Trainer) -> str:
        """Save `last.ckpt` now (atomically) and return its path."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_model_path


class Preemption(pl.Callback):
    """On SIGTERM or SLURM's requeue signal: finish the step, save `last.ckpt`, requeue under SLURM, exit 128 + signal.

    Needs a `RunCheckpoint` with `save_last: true` among the callbacks. Every rank stops after the same step:
    the ranks agree after each step whether any of them was signalled (one all-reduce of a flag).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._checkpoint(trainer) is None:
            raise ValueError(
                "lightning_most.fault_tolerance.Preemption saves last.ckpt through a RunCheckpoint: add "
                "{class_path: lightning_most.fault_tolerance.RunCheckpoint, init_args: {save_last: true}} to "
                "trainer.callbacks"
            )

    @staticmethod
    def _checkpoint(trainer: pl.Trainer) -> RunCheckpoint | None:
        return next((c for c in trainer.checkpoint_callbacks if isinstance(c, RunCheckpoint) and c.save_last), None)

    @staticmethod
    def _slurm(trainer: pl.Trainer) -> SLURMEnvironment | None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        return environment if isinstance(environment, SLURMEnvironment) else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the handlers (after Lightning's own, which `Trainer` installs just before training starts and
        restores when it ends)."""
        self.received, self._trainer = None, trainer
        slurm = self._slurm(trainer)
        requeue_signal = (slurm.requeue_signal if slurm is not None else None) or signal.SIGUSR1
        for signum in {signal.SIGTERM, requeue_signal}:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None and self._trainer is not None:
            launcher = self._trainer.strategy.launcher  # ranks that Lightning started itself get the signal too
            if launcher is not None:
                launcher.kill(signum)
        self.received = signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        signum = self.received or signal.SIGTERM  # a rank that was not signalled itself stops with its peers
        path = self._checkpoint(trainer).save_last_now(trainer)
        name = signal.Signals(signum).name
        slurm = self._slurm(trainer)
        requeue = slurm is not None and slurm.auto_requeue and signum == slurm.requeue_signal
        rank_zero_info(f"{name}: saved {path} after step {trainer.global_step}; "
                       + ("requeueing the SLURM job" if requeue else f"exiting with status {128 + signum}"))
        if requeue and trainer.is_global_zero:
            requeue_slurm_job()
        raise SIGTERMException(128 + signum)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Lightning's own SIGTERM stop (a signal before training started) exits 0: make it 143."""
        if isinstance(exception, SIGTERMException) and not exception.code:
            exception.code = 128 + signal.SIGTERM


def requeue_slurm_job() -> None:
    """`scontrol requeue` this SLURM job (or array task), as Lightning's auto-requeue does."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job = os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job], check=False)
    if result.returncode != 0:
        rank_zero_warn(f"`scontrol requeue {job}` failed with status {result.returncode}: resubmit the job by hand")


class DivergenceError(RuntimeError):
    """Training met a non-finite loss or gradient norm and `DivergenceGuard` was told to stop."""


class DivergenceGuard(pl.Callback):
    """Catches a non-finite loss or gradient norm on the step it happens, before the optimizer applies it.

    Checked after backward (before gradient clipping): the loss of every micro-batch and the norm of the
    gradients (each rank's own shard under FSDP2; the ranks agree with one all-reduce of a flag). On a
    non-finite value the gradients are dropped (`p.grad = None`), so AdamW leaves the weights and its
    moments as they were; the step still counts (`global_step` and the LR schedule advance, as with
    torch.amp's skipped steps) and the batch is not retried. Then, by `policy`:

    - "skip": warn, count it (`train/nonfinite_steps` in TensorBoard), continue; after
      `max_consecutive` skipped steps in a row, stop as below;
    - "stop": save `last.ckpt` (through `RunCheckpoint`; else `<default_root_dir>/nonfinite.ckpt`) and raise
      `DivergenceError` naming the step, the batch's tasks with a non-finite loss, and its cut ids.
      Rerunning the same command resumes after the bad batch.
    """

    def __init__(self, policy: str = "skip", max_consecutive: int = 10) -> None:
        """Args:
            policy: "skip" (drop the step's update and continue) or "stop" (checkpoint and raise).
            max_consecutive: "skip" stops after this many non-finite steps in a row.
        """
        if policy not in ("skip", "stop"):
            raise ValueError(f"DivergenceGuard policy={policy!r}: use 'skip' or 'stop'")
        if max_consecutive < 1:
            raise ValueError(f"DivergenceGuard max_consecutive must be >= 1, got {max_consecutive}")
        self.policy, self.max_consecutive = policy, max_consecutive
        self.skipped = 0
        self._consecutive = 0
        self._loss_ok: torch.Tensor | None = None  # () bool: every micro-batch loss of the step was finite
        self._cut_ids: list[str] = []
        self._tasks: list[str] = []
        self._stop: str | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, dict):
            self._cut_ids += list(batch.get("cut_ids", []))
            if "task_ids" in batch:
                self._tasks += [TASKS[t] for t in batch["task_ids"].unique().tolist() if TASKS[t] not in self._tasks]

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_ok = finite if self._loss_ok is None else self._loss_ok & finite

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms = [torch.linalg.vector_norm(_local(p.grad).float()) for p in params]
        grad_ok = torch.isfinite(torch.stack(norms).sum()) if norms else torch.tensor(True)
        loss_ok = self._loss_ok if self._loss_ok is not None else torch.tensor(True)
        loss_ok = trainer.strategy.reduce_boolean_decision(bool(loss_ok), all=True)
        grad_ok = trainer.strategy.reduce_boolean_decision(bool(grad_ok), all=True)
        if loss_ok and grad_ok:
            self._consecutive = 0
        else:
            for p in params:
                p.grad = None
            self.skipped += 1
            self._consecutive += 1
            message = self._describe(trainer, "loss" if not loss_ok else "gradient norm")
            if self.policy == "stop" or self._consecutive >= self.max_consecutive:
                self._stop = message + (
                    "" if self.policy == "stop" else f" ({self._consecutive} non-finite steps in a row)"
                )
            else:
                rank_zero_warn(f"{message}: its update was skipped ({self.skipped} skipped so far)")
        pl_module.log("train/nonfinite_steps", float(self.skipped), batch_size=1)
        self._loss_ok, self._cut_ids, self._tasks = None, [], []

    def _describe(self, trainer: pl.Trainer, what: str) -> str:
        step = trainer.global_step + 1  # the optimizer step being taken
        metrics = trainer.callback_metrics  # this step's logged losses
        bad = [t for t in self._tasks if not torch.isfinite(torch.as_tensor(metrics.get(f"train/loss_{t}", 0.0))).all()]
        ids = ", ".join(self._cut_ids[:8]) + (f", ... ({len(self._cut_ids)} cuts)" if len(self._cut_ids) > 8 else "")
        return (f"non-finite {what} at step {step}: tasks in the batch {self._tasks}, non-finite loss in "
                f"{bad or 'none of them (a gradient)'}; cut ids: {ids}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._stop is None:
            return
        checkpoint = Preemption._checkpoint(trainer)
        if checkpoint is not None:
            path = checkpoint.save_last_now(trainer)
        else:
            path = os.path.join(trainer.default_root_dir, "nonfinite.ckpt")
            trainer.save_checkpoint(path)
        message, self._stop = self._stop, None
        raise DivergenceError(
            f"{message}. Stopped with the weights before that step in {path} (rerunning the same command resumes "
            "after this batch); lower the learning rate or inspect those cuts"
        )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's own part of a (possibly FSDP2-sharded, DTensor) tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor

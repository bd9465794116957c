"""Stage 2: instruction tuning on spoken and written instructions, mixed with ASR and TTS (MoST: 0.4 / 0.4 / 0.1 / 0.1).

The mix is the data module's `task_weights` (`datamodules.EmbeddedInstructionDataModule` defaults to
MoST's). The loss, per-task logs, routing views and dev ASR WER are `StageModule`'s; the loss falls on
the answer tokens only, because the instruction layouts (`lightning_most.layouts`) give every prompt
position the label -100. What stage 2 adds:

- it starts from stage 1: `init_from` takes a stage-1 Lightning `.ckpt` (or a converted backbone);
- dev / test question answering: each speech_instruct and text_instruct row is answered greedily
  (at most `answer_max_new_tokens` text tokens) and scored by exact match against its reference
  answer (`lightning_most.evaluation.spoken_qa.exact_match`), logged as `{stage}/spoken_qa_accuracy`
  (S->T) and `{stage}/text_qa_accuracy`. On the generated instruction set these rows are the
  held-out questions (`datamodules.generated_instructions`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lightning_most.batch import TASKS
from lightning_most.evaluation.spoken_qa import exact_match
from lightning_most.stages.base import StageModule
from lightning_most.stages.evaluation import select_rows

log = logging.getLogger(__name__)
QA_METRICS = {"speech_instruct": "spoken_qa_accuracy", "text_instruct": "text_qa_accuracy"}


class Stage2Module(StageModule):
    """Stage-2 instruction tuning over the stage-1 backbone (see the module docstring).

    Args are `StageModule`'s, plus `answer_max_new_tokens`: the decoding budget of a dev/test answer.
    """

    def __init__(self, answer_max_new_tokens: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        if answer_max_new_tokens < 1:
            raise ValueError(f"answer_max_new_tokens must be >= 1, got {answer_max_new_tokens}")
        self._qa_counts: dict[str, Tensor] = {}  # "{stage}_{task}" -> (correct, answered)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        weights = getattr(self.trainer.datamodule, "task_weights", None) or {}
        unknown = sorted(t for t, w in weights.items() if w > 0 and t not in TASKS)  # stage 2 trains on every task
        if unknown:
            raise ValueError(f"stage 2 trains on {', '.join(TASKS)}; data.init_args.task_weights names {unknown}")
        if not self.hparams.init_from:
            log.warning("Stage2Module starts from a fresh backbone: set model.init_args.init_from to a stage-1 .ckpt")

    # ---- question answering ------------------------------------------------------------------
    def _score_answers(self, batch: dict, stage: str) -> None:
        for task in QA_METRICS:
            rows = (batch["task_ids"] == TASKS.index(task)).nonzero().flatten().tolist()
            if not rows:
                continue
            answers = self.decoder.answer(select_rows(batch, rows), self.hparams.answer_max_new_tokens)
            correct = sum(exact_match(a, [batch["texts"][i]]) for a, i in zip(answers, rows))
            counts = self._qa_counts.setdefault(f"{stage}_{task}", torch.zeros(2, device=self.device))
            counts += torch.tensor([correct, len(rows)], dtype=counts.dtype, device=self.device)

    def _log_answers(self, stage: str) -> None:
        """Log each QA accuracy of the epoch over all ranks (every rank takes the same branches)."""
        for task, name in QA_METRICS.items():
            counts = self._qa_counts.pop(f"{stage}_{task}", torch.zeros(2, device=self.device))
            if self._trainer is not None:
                counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
            if float(counts[1]) > 0:
                self.log(f"{stage}/{name}", counts[0] / counts[1], sync_dist=True)  # equal on every rank

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._score_answers(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._score_answers(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_answers("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_answers("test")
        super().on_test_epoch_end()

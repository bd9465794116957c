"""Stage 1: post-train the backbone on ASR / TTS / text-LM (MoST: 0.4 / 0.4 / 0.2, set by the data)."""

from __future__ import annotations

from lightning_most.batch import STAGE1_TASKS
from lightning_most.stages.base import StageModule


class Stage1Module(StageModule):
    """Stage-1 post-training: the mixed-task loss of `StageModule`, from a pretrained or fresh backbone.

    The task mix is the data module's (`task_weights`); this module logs each task's loss, the aux
    loss, routing, and the dev ASR WER. `init_from` starts from converted pretrained weights.
    """

    def on_fit_start(self) -> None:
        super().on_fit_start()
        weights = getattr(self.trainer.datamodule, "task_weights", None) or {}
        extra = sorted(t for t, w in weights.items() if w > 0 and t not in STAGE1_TASKS)
        if extra:
            raise ValueError(
                f"stage 1 trains on {', '.join(STAGE1_TASKS)}; data.init_args.task_weights also names {extra}: "
                "use Stage2Module for instruction tasks"
            )

"""Callbacks that the shipped configs use."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger


class RunSummary(pl.Callback):
    """At the end of fit/validate, print the dev ASR WER (and the CTC head's, if any), the judge's dev TTS WER, stage 2's dev QA accuracies and
    where the TensorBoard logs are."""

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        wer = trainer.callback_metrics.get("val/asr_wer")
        decoding = getattr(pl_module, "asr_decoding", None)  # a StageModule's ASRDecodingConfig
        how = f" ({decoding.describe()})" if decoding is not None else ""
        lines = [f"dev ASR WER: {float(wer):.2%}{how}" if wer is not None else "dev ASR WER: not measured (no ASR dev data)"]
        tts_wer = trainer.callback_metrics.get("val/tts_judge_wer")
        if tts_wer is not None:  # the stage spoke dev texts and the judge transcribed them
            samples = trainer.callback_metrics.get("val/tts_judge_samples")
            samples = int(samples) if samples is not None else "?"
            lines.append(f"dev TTS WER (Whisper tiny.en judge on {samples} spoken dev texts): {float(tts_wer):.2%}")
        ctc_wer = trainer.callback_metrics.get("val/asr_ctc_wer")
        if ctc_wer is not None:
            lines.append(f"dev ASR WER of the audio encoder's CTC head (greedy): {float(ctc_wer):.2%}")
        for name, what in (("spoken_qa_accuracy", "spoken QA accuracy (S->T)"), ("text_qa_accuracy", "text QA accuracy")):
            accuracy = trainer.callback_metrics.get(f"val/{name}")
            if accuracy is not None:  # stage 2: the ASR WER above is then the forgetting check
                lines.append(f"dev {what}, exact match on the held-out questions: {float(accuracy):.2%}")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                lines.append(f"TensorBoard logs: {logger.log_dir}  (tensorboard --logdir {logger.root_dir})")
        if trainer.checkpoint_callback is not None and getattr(trainer.checkpoint_callback, "last_model_path", ""):
            lines.append(f"last checkpoint: {trainer.checkpoint_callback.last_model_path}")
        print("\n".join(lines), flush=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module)


"""The evaluation hooks of a stage: dev/test losses per task, ASR WER (decoded and CTC), predict, TTS samples.

Under FSDP2 the backbone stays unsharded for a whole evaluation epoch (`parallel.unshard_for_evaluation`):
decoding runs a different number of forwards on each rank. Each metric is logged once per epoch,
reduced over all ranks (`_log_evaluation`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from torchmetrics.text import WordErrorRate

from lightning_most.audio import audio_io_vocoder
from lightning_most.batch import TASKS
from lightning_most.evaluation.asr import corpus_wer
from lightning_most.evaluation.judges import WhisperTinyJudge
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.evaluation.tts import judge_transcripts
from lightning_most.layouts import collate, tts_example
from lightning_most.parallel import reshard_after_evaluation, unshard_for_evaluation
from lightning_most.stages.losses import asr_segments, ctc_loss, task_losses

EVAL_LOSSES = ("all", *TASKS, "ctc")  # the losses logged per evaluation epoch: overall, per task, CTC


def select_rows(batch: dict, rows: list[int]) -> dict:
    """The sub-batch of `rows` of a collated batch (frames re-packed to match)."""
    index = torch.tensor(rows, device=batch["input_ids"].device)
    sub = {k: v[index] for k, v in batch.items() if isinstance(v, Tensor) and k != "audio_features"}
    sub.update({k: [v[i] for i in rows] for k, v in batch.items() if isinstance(v, list)})
    if "audio_features" in batch:
        frames_per_row = batch["feature_mask"].sum(dim=1)  # (B,)
        per_row = torch.split(batch["audio_features"], frames_per_row.tolist())
        sub["audio_features"] = torch.cat([per_row[i] for i in rows]) if rows else batch["audio_features"][:0]
    return sub


class StageEvaluation(pl.LightningModule):
    """Validation, test and predict hooks of `StageModule` (which provides `decoder`, `tokenizer`, `specials`)."""

    def configure_metrics(self) -> None:
        """The epoch's WERs (`{stage}`, and `{stage}_ctc` of the CTC head) and token-mean losses (`{stage}_{name}`)."""
        self.wer = torch.nn.ModuleDict({k: WordErrorRate() for k in ("val", "test", "val_ctc", "test_ctc")})
        self.eval_loss = torch.nn.ModuleDict({f"{st}_{name}": MeanMetric() for st in ("val", "test") for name in EVAL_LOSSES})
        self._sample_texts: list[str] = []  # dev transcripts spoken at the end of validation
        self._vocoder = None
        self._judge = None

    def _evaluation_step(self, batch: dict, stage: str) -> list[int]:
        """Update `stage`'s losses per task and its WERs; return the batch's ASR rows."""
        out = self(batch)
        loss, per_task = task_losses(out.logits, batch["labels"], batch["task_ids"])
        B = batch["input_ids"].shape[0]
        # Accumulated here, logged once per epoch by `_log_evaluation` (each loss weighted by its rows).
        self.eval_loss[f"{stage}_all"].update(loss.detach(), weight=B)
        for task, value in per_task.items():
            self.eval_loss[f"{stage}_{task}"].update(value.detach(), weight=int((batch["task_ids"] == TASKS.index(task)).sum()))
        ctc = ctc_loss(batch, out.ctc_logits, out.ctc_lengths, self.config.text_vocab_size, self.specials.base_vocab_size)
        asr_rows = (batch["task_ids"] == TASKS.index("asr")).nonzero().flatten().tolist()
        if ctc is not None:
            self.eval_loss[f"{stage}_ctc"].update(ctc.detach(), weight=len(asr_rows))
        if asr_rows:
            decoder = self.decoder
            hyps = decoder.transcribe(select_rows(batch, asr_rows))
            refs = [normalize_text(batch["texts"][i]) for i in asr_rows]
            self.wer[stage].update([normalize_text(h) for h in hyps], refs)
            if out.ctc_logits is not None:
                is_asr = asr_segments(batch).tolist()
                ctc_hyps = decoder.ctc_transcripts(out.ctc_logits, out.ctc_lengths)
                self.wer[f"{stage}_ctc"].update([normalize_text(h) for h, keep in zip(ctc_hyps, is_asr) if keep], refs)
        return asr_rows

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        asr_rows = self._evaluation_step(batch, "val")
        missing = self._num_sample_texts() - len(self._sample_texts)
        if missing > 0:
            self._sample_texts += [batch["texts"][i] for i in asr_rows[:missing]]

    def _num_sample_texts(self) -> int:
        """Dev texts spoken at each validation: those logged as audio, or judged if more."""
        judged = self.hparams.get("num_judged_samples", 0) if self.hparams.get("judge_audio_samples", False) else 0
        return max(self.hparams.num_audio_samples, judged)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Transcripts of the batch's ASR examples, decoded as configured: one dict per example (cut id, hypothesis, reference)."""
        rows = (batch["task_ids"] == TASKS.index("asr")).nonzero().flatten().tolist()
        hyps = self.decoder.transcribe(select_rows(batch, rows)) if rows else []
        return [{"cut_id": batch["cut_ids"][i], "hypothesis": h, "reference": batch["texts"][i]} for i, h in zip(rows, hyps)]

    def _log_evaluation(self, stage: str) -> None:
        """Log the epoch's dev/test losses and WERs over all ranks, each only if some rank measured it.

        Every rank takes the same branches in the same order (the counts are summed over ranks first), so
        the collectives of `compute` match even when a rank saw no row of some task.
        """
        metrics = [(f"{stage}/loss" if name == "all" else f"{stage}/loss_{name}", self.eval_loss[f"{stage}_{name}"],
                    "weight") for name in EVAL_LOSSES]
        metrics += [(f"{stage}/asr_wer", self.wer[stage], "total"), (f"{stage}/asr_ctc_wer", self.wer[f"{stage}_ctc"], "total")]
        for name, metric, count in metrics:
            seen = getattr(metric, count).detach().clone().float()
            if self._trainer is not None:
                seen = self.trainer.strategy.reduce(seen, reduce_op="sum")
            if float(seen) > 0:
                self.log(name, metric.compute(), sync_dist=True)  # equal on every rank: the mean is that value
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._sample_texts = []
        unshard_for_evaluation(self.backbone)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        if self._sample_texts and self.audio_io.get("unit_quantizer") and not self.trainer.sanity_checking:
            self._log_tts_samples(self._sample_texts)
        reshard_after_evaluation(self.backbone)

    def on_test_epoch_start(self) -> None:
        unshard_for_evaluation(self.backbone)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
        reshard_after_evaluation(self.backbone)

    def on_predict_epoch_start(self) -> None:
        unshard_for_evaluation(self.backbone)

    def on_predict_epoch_end(self) -> None:
        reshard_after_evaluation(self.backbone)

    def _log_tts_samples(self, texts: list[str]) -> None:
        """Speak dev texts (greedy units, the data's vocoder), log the audio to TensorBoard and the judge's WER on it."""
        writers = [lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or not self.trainer.is_global_zero:
            return
        if self._vocoder is None:
            try:
                self._vocoder = audio_io_vocoder(self.audio_io)
            except FileNotFoundError as error:  # the named vocoder is not trained yet: samples once it is
                rank_zero_warn(f"no spoken dev samples this validation: {error}")
                return
            if self._vocoder is None:
                rank_zero_warn("no spoken dev samples: these units need a vocoder trained on them (the data's `vocoder`)")
                return
        V = self.config.text_vocab_size
        examples = [tts_example(self.tokenizer.encode(t), torch.zeros(0, dtype=torch.long), self.specials, V, text=t)
                    for t in texts]
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in collate(examples, self.specials.pad).items()}
        num_units = self.audio_io.get("num_units") or self.config.num_audio_units
        units_per_text = self.decoder.units(batch, self.hparams.tts_max_new_tokens, num_units)
        waves = []
        for i, (text, units) in enumerate(zip(texts, units_per_text)):
            waves.append(self._vocoder(units.cpu()) if units.numel() else torch.zeros(320))  # no units: 20 ms of silence
            if i >= self.hparams.num_audio_samples:
                continue
            for writer in writers:
                writer.add_audio(f"tts_sample/{i}", waves[-1].flatten(), self.global_step, sample_rate=self._vocoder.sample_rate)
                writer.add_text(f"tts_sample/{i}_text", text, self.global_step)
        if self.hparams.get("judge_audio_samples", False):
            judged = self.hparams.get("num_judged_samples", self.hparams.num_audio_samples)
            self._log_judge_wer(texts[:judged], waves[:judged])

    def _log_judge_wer(self, texts: list[str], waves: list[Tensor]) -> None:
        """Log `val/tts_judge_wer`, the Whisper tiny.en judge's WER on the spoken dev texts, and how many it heard
        (`val/tts_judge_samples`; rank 0 only)."""
        if not texts:
            return
        if self._judge is None:
            self._judge = WhisperTinyJudge()
        wer, _ = corpus_wer(texts, judge_transcripts(self._judge, waves, batch_size=min(len(waves), 8)))
        self.log("val/tts_judge_wer", wer, rank_zero_only=True)
        self.log("val/tts_judge_samples", float(len(texts)), rank_zero_only=True)

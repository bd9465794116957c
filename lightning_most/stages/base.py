"""`StageModule`: the LightningModule shared by both training stages, wrapping one `MoSTBackbone`.

It owns what is common to every stage: building the backbone (in `configure_model`, so FSDP2 can
shard it as it is built), the masked next-token loss logged per task, the aux loss, AdamW with
linear warmup and cosine decay, routing logs (heatmaps, load histograms, entropy), dev ASR WER (greedy,
or beam search joint with the CTC head and a fused word LM, as configured), and the model-as-ASR /
model-as-TTS methods used by evaluation and the CLI.
Subclasses (`Stage1Module`, `Stage2Module`) differ in the tasks they train on and how they start.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from torchmetrics.text import WordErrorRate

from lightning_most.audio import build_vocoder
from lightning_most.backbone import MoSTBackbone, next_token_loss
from lightning_most.batch import IGNORE_INDEX, TASKS
from lightning_most.beam_search import beam_search
from lightning_most.compile import CompileConfig, compile_backbone
from lightning_most.config import AttentionOverrides, ModelConfig, ModelOverrides, MoEOverrides, build_config
from lightning_most.ctc_prefix import CTCPrefixScorer, JointCTCRescorer
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.generation import generate, prompts_from_batch
from lightning_most.layouts import collate, tts_example
from lightning_most.parallel import apply_fsdp2, reshard_after_evaluation, unshard_for_evaluation
from lightning_most.positions import audio_scaled_positions, decoding_positions
from lightning_most.routing_logging import log_routing
from lightning_most.safe_loading import load_checkpoint
from lightning_most.tokenizer import SpecialTokens, build_tokenizer
from lightning_most.word_lm import LexiconTrie, WordLMConfig, WordLMFusion, WordNgramLM

FRESH_AUDIO_MODULES = ("audio_encoder.", "ctc_head.")
"""Backbone parts that `init_from` leaves freshly initialised when the file has none of them (a text LM)."""
ASR_POSITIONS = ("sequential", "audio_scaled")
EVAL_LOSSES = ("all", *TASKS, "ctc")  # the losses logged per evaluation epoch: overall, per task, CTC


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * lr`."""

    lr: float = 3e-4
    weight_decay: float = 0.1
    """Applied to matrices (not to norms, biases or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    decay_steps: int | None = None
    """Steps of the cosine; None = the trainer's max_steps (constant after warmup if that is -1)."""
    min_lr_ratio: float = 0.1


# Checkpoints carry these config classes in their hyperparameters: let torch's weights_only loading
# (the default of torch.load, used by sharded FSDP2 resumes) rebuild them without unpickling code.
torch.serialization.add_safe_globals([OptimizerConfig, ModelOverrides, MoEOverrides, AttentionOverrides, WordLMConfig])
torch.serialization.add_safe_globals([CompileConfig])


class StageModule(pl.LightningModule):
    """One training stage over the shared backbone (see the module docstring)."""

    def __init__(
        self,
        backbone: str = "tiny",
        backbone_overrides: ModelOverrides | None = None,
        tokenizer: str = "byte",
        optimizer: OptimizerConfig | None = None,
        init_from: str | None = None,
        activation_checkpointing: bool = False,
        asr_max_new_tokens: int = 160,
        asr_max_tokens_per_frame: float | None = None,
        tts_max_new_tokens: int = 600,
        log_routing_every_n_steps: int = 100,
        num_audio_samples: int = 2,
        ctc_weight: float = 0.0,
        ctc_warmup_steps: int = 0,
        asr_positions: str = "sequential",
        asr_length_jitter: float = 0.15,
        asr_ctc_decoding_weight: float = 0.0,
        asr_beam_size: int = 1,
        asr_word_lm: WordLMConfig | None = None,
        compile: CompileConfig | None = None,
    ) -> None:
        """Build the stage.

        Args:
            backbone: preset name (`tiny`, `small`, `deepseek-v2-lite`, `llama-3.2-3b`).
            backbone_overrides: fields of the preset to change (any `ModelConfig` field, nested).
            tokenizer: "byte", or a local transformers tokenizer folder.
            optimizer: AdamW and schedule settings.
            init_from: backbone weights to start from: a Lightning checkpoint of an earlier stage, or a file
                written by `python -m lightning_most convert` from a local Hugging Face checkpoint.
            activation_checkpointing: recompute each decoder block in backward (saves memory).
            asr_max_new_tokens: decoding budget of a transcript (dev WER, transcribe).
            asr_max_tokens_per_frame: also cap each transcript at this many tokens per input frame (ESPnet's
                `maxlenratio`), so a decoder that loops stops near the audio's length; None = no cap.
            tts_max_new_tokens: decoding budget of a spoken answer in units (synthesize).
            log_routing_every_n_steps: how often routing heatmaps and load histograms are logged.
            num_audio_samples: dev texts spoken (Griffin-Lim) and logged to TensorBoard at each validation.
            ctc_weight: weight of a CTC loss on the audio encoder's output against ASR transcripts (needs
                `backbone_overrides.audio_encoder.ctc_head`); 0 = none, as in MoST (frozen HuBERT input).
            ctc_warmup_steps: the first N steps train only the audio projection, encoder and CTC head, on the
                batches' ASR rows (the decoder is not run): a from-scratch model pre-trains its own speech
                encoder where MoST starts from a pretrained HuBERT. Under DDP set find_unused_parameters.
            asr_positions: RoPE positions of ASR transcripts: "sequential" (MoST), or "audio_scaled", spread over
                the audio's frames (`lightning_most.positions`) so that a decoder trained from scratch learns to
                read its audio in hundreds of steps; needs the CTC head, whose greedy length sets them in decoding.
            asr_length_jitter: audio_scaled training scales each transcript's length by a factor drawn from
                [1 - j, 1 + j], so the decoder tolerates the CTC estimate's error.
            asr_ctc_decoding_weight: w of joint CTC / attention greedy decoding (`lightning_most.ctc_prefix`): each
                transcript token maximises (1 - w) log p_decoder + w log p_ctc-prefix; 0 = the decoder alone.
            asr_beam_size: ASR transcripts keep this many prefixes per example by the same joint score
                (`lightning_most.beam_search`); 1 = greedy.
            asr_word_lm: a word n-gram LM and lexicon fused into the ASR beam search (`lightning_most.word_lm`;
                byte tokenizer only), counted in `setup` on its `text_files` (empty: the data module's training
                text, then recorded there); None = none.
            compile: `torch.compile` of each decoder block (`lightning_most.compile`); None = eager.
    """
        super().__init__()
        if asr_word_lm is not None and tokenizer != "byte":
            raise ValueError(
                "asr_word_lm fuses a word LM into byte-level decoding: it needs tokenizer='byte' (or asr_word_lm: null)"
            )
        self.save_hyperparameters()
        self.config: ModelConfig = build_config(backbone, backbone_overrides)
        self.tokenizer = build_tokenizer(tokenizer)
        self.specials = SpecialTokens(self.tokenizer.base_vocab_size)
        if self.specials.text_vocab_size > self.config.text_vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer!r} needs text_vocab_size >= {self.specials.text_vocab_size} "
                f"({self.tokenizer.base_vocab_size} tokens + special tokens), but backbone '{backbone}' has "
                f"{self.config.text_vocab_size}: set model.init_args.backbone_overrides.text_vocab_size"
            )
        self.optim = optimizer or OptimizerConfig()
        if ctc_weight < 0:
            raise ValueError(f"ctc_weight must be >= 0, got {ctc_weight}")
        if ctc_warmup_steps < 0:
            raise ValueError(f"ctc_warmup_steps must be >= 0, got {ctc_warmup_steps}")
        if ctc_warmup_steps > 0 and ctc_weight <= 0:
            raise ValueError(f"ctc_warmup_steps={ctc_warmup_steps} trains the CTC head: set ctc_weight > 0")
        if ctc_weight > 0 and not self.config.audio_encoder.ctc_head:
            raise ValueError(
                f"ctc_weight={ctc_weight} needs a CTC head: set model.init_args.backbone_overrides.audio_encoder.ctc_head "
                "(and num_conv_layers / num_layers > 0), or ctc_weight=0"
            )
        if asr_positions not in ASR_POSITIONS:
            raise ValueError(f"asr_positions={asr_positions!r}: use one of {ASR_POSITIONS}")
        if asr_positions == "audio_scaled" and not self.config.audio_encoder.ctc_head:
            raise ValueError(
                "asr_positions='audio_scaled' needs the CTC head (its greedy transcript length sets the positions in "
                "decoding): set model.init_args.backbone_overrides.audio_encoder.ctc_head and ctc_weight > 0"
            )
        if not 0 <= asr_ctc_decoding_weight <= 1:
            raise ValueError(f"asr_ctc_decoding_weight must lie in [0, 1], got {asr_ctc_decoding_weight}")
        if asr_ctc_decoding_weight > 0 and not self.config.audio_encoder.ctc_head:
            raise ValueError(
                "asr_ctc_decoding_weight > 0 decodes with the CTC head: set "
                "model.init_args.backbone_overrides.audio_encoder.ctc_head and ctc_weight > 0"
            )
        if asr_beam_size < 1:
            raise ValueError(f"asr_beam_size must be >= 1, got {asr_beam_size}")
        self._word_lm: tuple[tuple, WordNgramLM, LexiconTrie] | None = None  # (what it was counted from, LM, lexicon)
        if not 0 <= asr_length_jitter < 1:
            raise ValueError(f"asr_length_jitter must lie in [0, 1), got {asr_length_jitter}")
        self.backbone: MoSTBackbone | None = None
        self._weights_from_checkpoint = False  # set when loading a checkpoint: init_from is then not read
        # `*_ctc`: greedy CTC transcripts of the audio encoder's head (with `audio_encoder.ctc_head`).
        self.wer = torch.nn.ModuleDict({k: WordErrorRate() for k in ("val", "test", "val_ctc", "test_ctc")})
        # "{stage}_{all | task | ctc}": token-mean losses of the epoch (`_log_evaluation`).
        self.eval_loss = torch.nn.ModuleDict({f"{st}_{name}": MeanMetric() for st in ("val", "test") for name in EVAL_LOSSES})
        self.audio_io: dict[str, Any] = {}  # how audio became features/units in training (saved in checkpoints)
        self._last_step_time: float | None = None
        self._sample_texts: list[str] = []
        self._vocoder = None

    # ---- model -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the backbone once; shard it with FSDP2 when run under ModelParallelStrategy."""
        if self.backbone is not None:
            return
        self.backbone = MoSTBackbone(self.config)
        self.backbone.activation_checkpointing = self.hparams.activation_checkpointing
        if self.hparams.init_from and not self._weights_from_checkpoint:
            self._load_backbone_weights(self.hparams.init_from)
        compile_backbone(self.backbone, self.hparams.compile or CompileConfig())
        mesh = self.device_mesh  # set by ModelParallelStrategy, None otherwise
        if mesh is not None:
            apply_fsdp2(self.backbone, mesh, precision=self.trainer.precision)

    def _load_backbone_weights(self, path: str) -> None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"init_from={path}: no such checkpoint file")
        # Converted checkpoints (`python -m lightning_most convert`) hold tensors only; Lightning's also hold config.
        state = load_checkpoint(file)
        weights = state.get("state_dict", state)
        weights = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")} or weights
        missing, unexpected = self.backbone.load_state_dict(weights, strict=False)
        # A text LM (converted / upcycled) has no audio encoder or CTC head: those start fresh, as its audio rows do.
        if not any(k.startswith(FRESH_AUDIO_MODULES) for k in weights):
            missing = [k for k in missing if not k.startswith(FRESH_AUDIO_MODULES)]
        if missing or unexpected:
            raise ValueError(
                f"init_from={path} does not fit backbone '{self.hparams.backbone}': "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )

    def forward(self, batch: dict):
        """Backbone outputs for a collated batch."""
        return self.backbone(
            batch["input_ids"], batch["modality_ids"], batch["attention_mask"],
            batch.get("audio_features"), batch["feature_mask"], position_ids=self._positions(batch),
        )

    @property
    def _scaled_positions(self) -> bool:
        return self.hparams.get("asr_positions", "sequential") == "audio_scaled"

    def _positions(self, batch: dict) -> Tensor | None:
        """Teacher-forced positions: None (consecutive), or audio_scaled ones from the true transcript lengths."""
        if not self._scaled_positions:
            return None
        is_asr = batch["task_ids"] == TASKS.index("asr")  # (B,)
        lengths = ((batch["labels"] != IGNORE_INDEX).sum(dim=1) - 1).clamp(min=0).float()  # transcript, <eos> excluded
        jitter = self.hparams.asr_length_jitter
        if self.training and jitter > 0:  # seeded by the step: a resumed run draws the same factors
            generator = torch.Generator().manual_seed(int(self.global_step))
            factors = 1 + jitter * (2 * torch.rand(lengths.shape[0], generator=generator) - 1)
            lengths = lengths * factors.to(lengths.device)
        return audio_scaled_positions(batch["attention_mask"], batch["feature_mask"], is_asr, lengths)

    # ---- losses ------------------------------------------------------------------------------
    def _task_losses(self, batch: dict, logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Token-mean loss over all targets, and the token-mean loss of each task in the batch."""
        labels = batch["labels"]
        per_token = next_token_loss(logits, labels, reduction="none").view_as(labels)  # (B, T)
        is_target = labels != IGNORE_INDEX
        loss = per_token.sum() / is_target.sum().clamp(min=1)
        per_task = {}
        for t in batch["task_ids"].unique().tolist():
            rows = batch["task_ids"] == t
            per_task[TASKS[t]] = per_token[rows].sum() / is_target[rows].sum().clamp(min=1)
        return loss, per_task

    @staticmethod
    def _asr_segments(batch: dict) -> Tensor:
        """(R,) bool: which audio segments (the rows with frames, in order) belong to ASR rows."""
        has_frames = batch["feature_mask"].any(dim=1)  # (B,)
        return batch["task_ids"][has_frames] == TASKS.index("asr")

    def _ctc_loss(self, batch: dict, ctc_logits: Tensor | None, ctc_lengths: Tensor | None) -> Tensor | None:
        """Mean per-token CTC loss of the ASR rows' encoder output against their transcripts (None without any)."""
        if ctc_logits is None or ctc_lengths is None:
            return None
        is_asr = self._asr_segments(batch)  # (R,)
        if not bool(is_asr.any()):
            return None
        labels = batch["labels"][batch["feature_mask"].any(dim=1)][is_asr]  # (R_asr, T)
        is_text = (labels != IGNORE_INDEX) & (labels < self.specials.base_vocab_size)  # transcript tokens, no <eos>
        log_probs = ctc_logits[is_asr].float().log_softmax(-1).transpose(0, 1)  # (L, R_asr, V + 1)
        return torch.nn.functional.ctc_loss(
            log_probs, labels[is_text], ctc_lengths[is_asr], is_text.sum(dim=1),
            blank=self.config.text_vocab_size, reduction="mean", zero_infinity=True,
        )

    def _ctc_warmup_step(self, batch: dict) -> Tensor:
        """Encoder-only step: the CTC loss of the ASR rows (a graph-connected zero if the batch has none)."""
        B = batch["input_ids"].shape[0]
        ctc = None
        if batch.get("audio_features") is not None and batch["audio_features"].numel():
            ctc = self._ctc_loss(batch, *self.backbone.ctc_logits(batch["audio_features"], batch["feature_mask"]))
        if ctc is None:
            return sum(p.sum() for p in self.backbone.ctc_head.parameters()) * 0.0
        self.log("train/loss_ctc", ctc, batch_size=B)
        return self.hparams.ctc_weight * ctc

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.global_step < self.hparams.get("ctc_warmup_steps", 0):
            return self._ctc_warmup_step(batch)
        out = self(batch)
        loss, per_task = self._task_losses(batch, out.logits)
        B = batch["input_ids"].shape[0]
        for task, value in per_task.items():
            self.log(f"train/loss_{task}", value, batch_size=B)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/aux_loss", out.aux_loss, batch_size=B)
        self._log_throughput(batch)
        if self.global_step % self.hparams.log_routing_every_n_steps == 0 and out.routing:
            log_routing(self, out.routing, self.global_step)
        total = loss + out.aux_loss
        ctc = self._ctc_loss(batch, out.ctc_logits, out.ctc_lengths) if self.hparams.ctc_weight > 0 else None
        if ctc is not None:
            self.log("train/loss_ctc", ctc, batch_size=B)
            total = total + self.hparams.ctc_weight * ctc
        return total

    def _log_throughput(self, batch: dict) -> None:
        now = time.perf_counter()
        if self._last_step_time is not None:
            tokens = int(batch["attention_mask"].sum()) * self.trainer.world_size
            self.log("train/tokens_per_sec", tokens / max(now - self._last_step_time, 1e-9), batch_size=1)
        self._last_step_time = now
        skipped = getattr(self.trainer.datamodule, "skipped", None) if self.trainer.datamodule else None
        if skipped:
            self.log("train/skipped_cuts", float(sum(skipped.values())), batch_size=1)

    def _evaluation_step(self, batch: dict, stage: str) -> list[int]:
        """Log `stage`/loss per task and update the stage's WER; return the batch's ASR rows."""
        out = self(batch)
        loss, per_task = self._task_losses(batch, out.logits)
        B = batch["input_ids"].shape[0]
        # Accumulated here, logged once per epoch by `_log_evaluation` (each loss weighted by its rows).
        self.eval_loss[f"{stage}_all"].update(loss.detach(), weight=B)
        for task, value in per_task.items():
            self.eval_loss[f"{stage}_{task}"].update(value.detach(), weight=int((batch["task_ids"] == TASKS.index(task)).sum()))
        ctc = self._ctc_loss(batch, out.ctc_logits, out.ctc_lengths)
        asr_rows = (batch["task_ids"] == TASKS.index("asr")).nonzero().flatten().tolist()
        if ctc is not None:
            self.eval_loss[f"{stage}_ctc"].update(ctc.detach(), weight=len(asr_rows))
        if asr_rows:
            hyps = self.transcribe_batch(_select(batch, asr_rows))
            refs = [normalize_text(batch["texts"][i]) for i in asr_rows]
            self.wer[stage].update([normalize_text(h) for h in hyps], refs)
            if out.ctc_logits is not None:
                self.wer[f"{stage}_ctc"].update([normalize_text(h) for h in self._ctc_transcripts(batch, out)], refs)
        return asr_rows

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        asr_rows = self._evaluation_step(batch, "val")
        missing = self.hparams.num_audio_samples - len(self._sample_texts)
        if missing > 0:
            self._sample_texts += [batch["texts"][i] for i in asr_rows[:missing]]

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Transcripts of the batch's ASR examples, decoded as configured: one dict per example (cut id, hypothesis, reference)."""
        rows = (batch["task_ids"] == TASKS.index("asr")).nonzero().flatten().tolist()
        hyps = self.transcribe_batch(_select(batch, rows)) if rows else []
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

    def _greedy_ctc_ids(self, ctc_logits: Tensor, ctc_lengths: Tensor) -> list[list[int]]:
        """Greedy CTC token ids of each audio segment (best id per frame, repeats merged, blanks dropped)."""
        best = ctc_logits.argmax(-1)  # (R, L)
        blank, base = self.config.text_vocab_size, self.specials.base_vocab_size
        out = []
        for r, length in enumerate(ctc_lengths.tolist()):
            ids = torch.unique_consecutive(best[r, :length]).tolist()
            out.append([i for i in ids if i != blank and i < base])
        return out

    def _prompt_ctc(self, prompt: dict) -> tuple[Tensor, Tensor]:
        """CTC logits (B, L, V + 1) and frames (B,) of each prompt row (every row must hold audio)."""
        if prompt.get("audio_features") is None or not bool(prompt["feature_mask"].any(dim=1).all()):
            raise ValueError("decoding with the CTC head needs audio frames in every prompt row")
        return self.backbone.ctc_logits(prompt["audio_features"], prompt["feature_mask"])

    def _ctc_transcripts(self, batch: dict, out) -> list[str]:
        """Greedy CTC transcripts of the batch's ASR rows."""
        is_asr = self._asr_segments(batch).tolist()
        ids = self._greedy_ctc_ids(out.ctc_logits, out.ctc_lengths)
        return [self.tokenizer.decode(row) for row, keep in zip(ids, is_asr) if keep]

    # Under FSDP2 the backbone stays unsharded for a whole evaluation epoch (`parallel.unshard_for_evaluation`):
    # decoding runs a different number of forwards on each rank.
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
        """Speak dev texts (greedy units, Griffin-Lim) and log the audio to TensorBoard."""
        writers = [lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or not self.trainer.is_global_zero:
            return
        if self._vocoder is None:
            self._vocoder = build_vocoder("griffin_lim", quantizer=self.audio_io["unit_quantizer"])
        V = self.config.text_vocab_size
        examples = [tts_example(self.tokenizer.encode(t), torch.zeros(0, dtype=torch.long), self.specials, V, text=t)
                    for t in texts]
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in collate(examples, self.specials.pad).items()}
        for i, (text, units) in enumerate(zip(texts, self.units_for_batch(batch))):
            wave = self._vocoder(units.cpu()) if units.numel() else torch.zeros(320)  # no units: 20 ms of silence
            for writer in writers:
                writer.add_audio(f"tts_sample/{i}", wave.flatten(), self.global_step, sample_rate=self._vocoder.sample_rate)
                writer.add_text(f"tts_sample/{i}_text", text, self.global_step)

    # ---- decoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def transcribe_batch(self, batch: dict) -> list[str]:
        """Transcripts of the ASR examples of a collated batch (prompts = audio + <asr>), or greedy answers of its
        speech-instruction examples; ASR rows use `asr_positions`, joint CTC decoding, the beam and the word LM
        as configured."""
        was_training = self.backbone.training
        self.backbone.eval()
        prompt = prompts_from_batch(batch, self.specials.pad)
        allowed = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=self.device)
        allowed[: self.specials.base_vocab_size] = True
        allowed[self.specials.eos] = True
        positions, rescorer = None, None
        # The CTC head transcribes the prompt's audio: it shapes ASR transcripts, not answers to spoken questions.
        is_asr = batch["task_ids"] == TASKS.index("asr")
        if bool(is_asr.any()) and not bool(is_asr.all()):
            raise ValueError("transcribe_batch decodes ASR rows or instruction rows, not a mix of both")
        scaled = self._scaled_positions and bool(is_asr.all())
        ctc_weight = self.hparams.get("asr_ctc_decoding_weight", 0.0) if bool(is_asr.all()) else 0.0
        if scaled or ctc_weight > 0:
            ctc_logits, ctc_lengths = self._prompt_ctc(prompt)  # (B, L, V + 1), (B,)
        if scaled:
            ids = self._greedy_ctc_ids(ctc_logits, ctc_lengths)
            lengths = torch.tensor([len(t) for t in ids], dtype=torch.float32, device=self.device)
            positions = decoding_positions(prompt, torch.ones_like(lengths, dtype=torch.bool), lengths)
        beam = self.hparams.get("asr_beam_size", 1) if bool(is_asr.all()) else 1
        if ctc_weight > 0:
            log_probs = ctc_logits.float().log_softmax(-1).repeat_interleave(beam, dim=0)  # (B * beam, L, V + 1)
            scorer = CTCPrefixScorer(log_probs, ctc_lengths.repeat_interleave(beam), blank=self.config.text_vocab_size)
            rescorer = JointCTCRescorer(scorer, ctc_weight, self.specials.base_vocab_size, self.specials.eos)
        ratio = self.hparams.get("asr_max_tokens_per_frame")
        frames = prompt["feature_mask"].sum(dim=1)  # (B,)
        word_lm = self._word_lm_fusion(prompt["input_ids"].shape[0] * beam) if bool(is_asr.all()) else None
        if beam > 1 or word_lm is not None:
            caps = None if ratio is None else (ratio * frames.float()).ceil().long()
            rows = beam_search(self.backbone, prompt, self.hparams.asr_max_new_tokens, beam, allowed, self.specials.eos,
                               max_lengths=caps, positions=positions, rescorer=rescorer, word_lm=word_lm)
        else:
            rows = generate(self.backbone, prompt, self.hparams.asr_max_new_tokens, allowed, (self.specials.eos,),
                            positions=positions, rescorer=rescorer).tolist()
            if ratio is not None:  # greedy rows are independent: cutting one after decoding = stopping it there
                rows = [row[: max(1, math.ceil(ratio * n))] for row, n in zip(rows, frames.tolist())]
        self.backbone.train(was_training)
        return [self.tokenizer.decode([i for i in row if 0 <= i < self.specials.base_vocab_size]) for row in rows]

    def asr_decoding(self) -> str:
        """How ASR transcripts are decoded, in words (printed beside the dev WER)."""
        beam = self.hparams.get("asr_beam_size", 1)
        parts = [f"beam {beam}" if beam > 1 else "greedy"]
        if self.hparams.get("asr_ctc_decoding_weight", 0.0) > 0:
            parts.append(f"joint CTC weight {self.hparams.asr_ctc_decoding_weight}")
        config = self._word_lm_config()
        if config is not None:
            parts.append(f"word LM weight {config.weight}")
        return ", ".join(parts)

    def _word_lm_config(self) -> WordLMConfig | None:
        config = self.hparams.get("asr_word_lm")
        return WordLMConfig(**config) if isinstance(config, dict) else config  # a dict when given as YAML

    def _counted_word_lm(self, config: WordLMConfig) -> tuple[WordNgramLM, LexiconTrie]:
        """The word LM and lexicon of `config`, counted once (again only if what it is counted from changes)."""
        key = (tuple(config.text_files), config.order, config.discount, config.wordfreq_words, config.wordfreq_weight)
        if self._word_lm is None or self._word_lm[0] != key:
            lm = WordNgramLM.from_config(config)
            self._word_lm = (key, lm, LexiconTrie(lm))
        return self._word_lm[1], self._word_lm[2]

    def _word_lm_fusion(self, num_rows: int) -> WordLMFusion | None:
        """The configured word LM's fusion state for `num_rows` beam rows; None without `asr_word_lm`."""
        config = self._word_lm_config()
        if config is None:
            return None
        lm, trie = self._counted_word_lm(config)
        return WordLMFusion(lm, trie, config, num_rows, self.config.vocab_size, self.specials.eos, self.device)

    @torch.no_grad()
    def units_for_batch(
        self,
        batch: dict,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        num_units: int | None = None,
    ) -> list[Tensor]:
        """Audio units (unit indices, not ids) generated for the TTS prompts of a collated batch.

        Only the corpus's `num_units` units (default: from `audio_io`) or <audio_end> may be emitted.
        """
        was_training = self.backbone.training
        self.backbone.eval()
        prompt = prompts_from_batch(batch, self.specials.pad)  # each prompt ends with <audio_start>
        V = self.config.text_vocab_size
        num_units = num_units or self.audio_io.get("num_units", self.config.num_audio_units)
        allowed = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=self.device)
        allowed[V : V + num_units] = True
        allowed[self.specials.audio_end] = True
        ids = generate(self.backbone, prompt, self.hparams.tts_max_new_tokens, allowed, (self.specials.audio_end,),
                       temperature=temperature, top_k=top_k, generator=generator)
        self.backbone.train(was_training)
        return [row[row >= V] - V for row in ids.cpu()]

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.backbone.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
        o = self.optim
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=tuple(o.betas),
        )
        total = o.decay_steps or (self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None)

        def schedule(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / o.warmup_steps
            if total is None:
                return 1.0
            progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        for optimizer in self.trainer.optimizers if self.trainer else []:
            fill_missing_adamw_state(optimizer)

    # ---- checkpoints -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        check_data_fits_model(self.config, dm)
        if dm is not None and hasattr(dm, "audio_io"):
            self.audio_io = dm.audio_io()

    def setup(self, stage: str) -> None:
        """Give a word LM without `text_files` the data module's training text, and count it now: a missing
        file fails here, not at the first validation."""
        config = self._word_lm_config()
        if config is None:
            return
        if not config.text_files:
            dm = self.trainer.datamodule if self._trainer is not None else None
            if dm is None or not hasattr(dm, "word_lm_text_files"):
                raise ValueError(
                    "asr_word_lm.text_files is empty and there is no data module that names its training text: "
                    "list the files the word LM is counted on"
                )
            # Saved with the hyperparameters (as a plain dict, like every config given as YAML, so that
            # LightningCLI can read them back): transcribe / evaluate count the same text.
            config = dataclasses.replace(config, text_files=dm.word_lm_text_files())
            self.hparams.asr_word_lm = dataclasses.asdict(config)
        self._counted_word_lm(config)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["audio_io"] = self.audio_io

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.audio_io = checkpoint.get("audio_io", {})
        # The checkpoint's weights replace init_from's, whose file need not exist where the checkpoint is loaded.
        self._weights_from_checkpoint = True
        self.configure_model()


def fill_missing_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter that has had no gradient yet the zero state AdamW would create at its first step.

    A sharded (FSDP2) checkpoint is loaded against a state for every parameter, so one saved while some
    parameter never had a gradient (the audio projector before the first ASR batch, the decoder during
    `ctc_warmup_steps`) could not be resumed. The zero state is exactly what AdamW starts from, and
    parameters without a gradient are still skipped by its step, so training is unchanged.
    """
    if not isinstance(optimizer, torch.optim.AdamW):
        return
    if len(optimizer.state) >= sum(len(g["params"]) for g in optimizer.param_groups):
        return  # every parameter has its state (every step after the first few): nothing to walk
    for group in optimizer.param_groups:
        on_device = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            if optimizer.state.get(p):
                continue
            step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state = {
                "step": torch.zeros((), dtype=step_dtype, device=p.device) if on_device else torch.tensor(0.0, dtype=step_dtype),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            optimizer.state[p] = state


def _select(batch: dict, rows: list[int]) -> dict:
    """The sub-batch of `rows` (frames re-packed to match)."""
    index = torch.tensor(rows, device=batch["input_ids"].device)
    sub = {k: v[index] for k, v in batch.items() if isinstance(v, Tensor) and k != "audio_features"}
    sub.update({k: [v[i] for i in rows] for k, v in batch.items() if isinstance(v, list)})
    if "audio_features" in batch:
        frames_per_row = batch["feature_mask"].sum(dim=1)  # (B,)
        per_row = torch.split(batch["audio_features"], frames_per_row.tolist())
        sub["audio_features"] = torch.cat([per_row[i] for i in rows]) if rows else batch["audio_features"][:0]
    return sub


def check_data_fits_model(config: ModelConfig, datamodule: Any) -> None:
    """Fail early, naming the fields, if the data's feature width or unit count differ from the backbone's."""
    if datamodule is None:
        return
    try:
        dim = getattr(datamodule, "feature_dim", None)
    except ValueError:  # precomputed features: the width is only known from the stored arrays
        dim = None
    if dim is not None and dim != config.audio_feature_dim:
        raise ValueError(
            f"data features are {dim}-dimensional (num_mel_bins x frame_stack) but the backbone expects "
            f"audio_feature_dim={config.audio_feature_dim}: set model.init_args.backbone_overrides.audio_feature_dim={dim}"
        )
    units = getattr(datamodule, "num_units", None)
    if units is not None and units > config.num_audio_units:
        raise ValueError(
            f"the corpus has {units} audio units but the backbone has num_audio_units={config.num_audio_units}: "
            f"set model.init_args.backbone_overrides.num_audio_units={units}"
        )

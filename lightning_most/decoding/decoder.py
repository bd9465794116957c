"""`Decoder`: ASR transcripts and TTS units from a backbone, decoded as configured.

The one decoding interface of the stage modules (dev WER, TTS samples, predict), `inference`
(transcribe, synthesize, answer), `commands.evaluate` and the benches. Per ASR batch it chains the
pieces of this package:

    prompt  = prompts_from_batch(batch)                  audio + <asr>, left-padded
    ctc     = backbone.ctc_logits(prompt)                the audio encoder's CTC head (if used)
    lengths = greedy CTC transcript lengths              -> audio_scaled positions (`positions.py`)
    scores  = (1 - w) log p_decoder + w log psi_ctc      `ctc_prefix.JointCTCRescorer` (w = ctc_weight)
            + word LM deltas                             `word_lm.WordLMFusion` (with word_lm)
    ids     = beam_search(...) or generate(...)          beam_size > 1 or a word LM: the beam; else greedy
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_most.backbone import MoSTBackbone
from lightning_most.batch import TASKS
from lightning_most.decoding.beam_search import beam_search
from lightning_most.decoding.ctc_prefix import CTCPrefixScorer, JointCTCRescorer
from lightning_most.decoding.generation import generate, prompts_from_batch
from lightning_most.decoding.word_lm import WordLMConfig, WordLMFusion, counted_word_lm
from lightning_most.positions import decoding_positions, unit_decoding_positions
from lightning_most.tokenizer import SpecialTokens, TextTokenizer


@dataclass
class ASRDecodingConfig:
    """How ASR transcripts are decoded: dev WER, predict, transcribe, evaluate (YAML: `model.init_args.asr_decoding`)."""

    max_new_tokens: int = 160
    """Decoding budget of a transcript, in tokens."""
    max_tokens_per_frame: float | None = None
    """Also cap each transcript at this many tokens per input frame (ESPnet's `maxlenratio`), so that a decoder
    that loops stops near the audio's length; None = no cap."""
    ctc_weight: float = 0.0
    """w of joint CTC / attention decoding (`ctc_prefix`): each token maximises
    (1 - w) log p_decoder + w log p_ctc-prefix; 0 = the decoder alone. Needs the audio encoder's CTC head."""
    beam_size: int = 1
    """Prefixes kept per example by that joint score (plus the word LM's; `beam_search`); 1 = greedy."""
    word_lm: WordLMConfig | None = None
    """A word n-gram LM and lexicon fused into the beam (`word_lm`; byte tokenizer only), counted when the stage is
    set up, on its `text_files` (empty: the data module's training text, then recorded there); None = none."""

    def __post_init__(self) -> None:
        if isinstance(self.word_lm, dict):  # read back from a checkpoint's hyperparameters
            self.word_lm = WordLMConfig(**self.word_lm)
        if self.max_new_tokens < 1:
            raise ValueError(f"asr_decoding.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_tokens_per_frame is not None and self.max_tokens_per_frame <= 0:
            raise ValueError(f"asr_decoding.max_tokens_per_frame must be > 0 (or null), got {self.max_tokens_per_frame}")
        if not 0 <= self.ctc_weight <= 1:
            raise ValueError(f"asr_decoding.ctc_weight must lie in [0, 1], got {self.ctc_weight}")
        if self.beam_size < 1:
            raise ValueError(f"asr_decoding.beam_size must be >= 1, got {self.beam_size}")

    def describe(self) -> str:
        """How transcripts are decoded, in words (printed beside the dev WER)."""
        parts = [f"beam {self.beam_size}" if self.beam_size > 1 else "greedy"]
        if self.ctc_weight > 0:
            parts.append(f"joint CTC weight {self.ctc_weight}")
        if self.word_lm is not None:
            parts.append(f"word LM weight {self.word_lm.weight}")
        return ", ".join(parts)


@contextmanager
def eval_mode(backbone: MoSTBackbone) -> Iterator[None]:
    """The backbone in eval mode inside the block, back in its former mode after it."""
    was_training = backbone.training
    backbone.eval()
    try:
        yield
    finally:
        backbone.train(was_training)


def greedy_ctc_ids(ctc_logits: Tensor, ctc_lengths: Tensor, blank: int, num_tokens: int) -> list[list[int]]:
    """Greedy CTC token ids of each audio segment (best id per frame, repeats merged, blanks and ids >= num_tokens dropped).

    Args:
        ctc_logits: (R, L, V + 1) logits of R segments.
        ctc_lengths: (R,) frames of each segment.
        blank: the blank id.
        num_tokens: ids below this are text tokens.
    """
    best = ctc_logits.argmax(-1)  # (R, L)
    out = []
    for r, length in enumerate(ctc_lengths.tolist()):
        ids = torch.unique_consecutive(best[r, :length]).tolist()
        out.append([i for i in ids if i != blank and i < num_tokens])
    return out


class Decoder:
    """ASR transcripts and TTS units of collated batches from one backbone (see the module docstring).

    Args:
        backbone: the model (its weights loaded; put in eval mode while decoding).
        specials: the special token ids.
        tokenizer: turns text token ids into transcripts.
        asr: how transcripts are decoded.
        scaled_positions: transcripts sit at audio_scaled positions (`TranscriptPositionsConfig.kind`).
        units_per_token: TTS units sit at text_scaled positions (`UnitPositionsConfig.kind`) for this many units per
            text token; None = consecutive positions.
    """

    def __init__(
        self,
        backbone: MoSTBackbone,
        specials: SpecialTokens,
        tokenizer: TextTokenizer,
        asr: ASRDecodingConfig,
        scaled_positions: bool = False,
        units_per_token: float | None = None,
    ) -> None:
        self.backbone, self.specials, self.tokenizer, self.asr = backbone, specials, tokenizer, asr
        self.scaled_positions, self.units_per_token = scaled_positions, units_per_token

    @property
    def device(self) -> torch.device:
        """Where the backbone's weights live."""
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def transcribe(self, batch: dict) -> list[str]:
        """Transcripts of the ASR rows of a collated batch (prompts = audio + <asr>), or greedy answers of its
        speech-instruction rows; ASR rows use the positions, joint CTC weight, beam and word LM configured."""
        is_asr = batch["task_ids"] == TASKS.index("asr")
        if bool(is_asr.any()) and not bool(is_asr.all()):
            raise ValueError("Decoder.transcribe decodes ASR rows or instruction rows, not a mix of both")
        asr = bool(is_asr.all())  # the CTC head transcribes the audio: it shapes transcripts, not answers
        with eval_mode(self.backbone):
            rows = self._asr_ids(prompts_from_batch(batch, self.specials.pad), asr)
        return [self.tokenizer.decode([i for i in row if 0 <= i < self.specials.base_vocab_size]) for row in rows]

    @torch.no_grad()
    def answer(self, batch: dict, max_new_tokens: int) -> list[str]:
        """Greedy text answers to the instruction rows of a collated batch (prompts up to <answer>), each at most
        `max_new_tokens` tokens; none of the ASR aids (CTC head, beam, word LM, per-frame length cap) apply."""
        allowed = torch.zeros(self.backbone.config.vocab_size, dtype=torch.bool, device=self.device)
        allowed[: self.specials.base_vocab_size] = True
        allowed[self.specials.eos] = True
        with eval_mode(self.backbone):
            rows = generate(self.backbone, prompts_from_batch(batch, self.specials.pad), max_new_tokens, allowed,
                            (self.specials.eos,)).tolist()
        return [self.tokenizer.decode([i for i in row if 0 <= i < self.specials.base_vocab_size]) for row in rows]

    def _asr_ids(self, prompt: dict, asr: bool) -> list[list[int]]:
        config, device = self.asr, self.device
        allowed = torch.zeros(self.backbone.config.vocab_size, dtype=torch.bool, device=device)
        allowed[: self.specials.base_vocab_size] = True
        allowed[self.specials.eos] = True
        scaled = self.scaled_positions and asr
        ctc_weight = config.ctc_weight if asr else 0.0
        beam = config.beam_size if asr else 1
        positions, rescorer = None, None
        if scaled or ctc_weight > 0:
            ctc_logits, ctc_lengths = self._prompt_ctc(prompt)  # (B, L, V + 1), (B,)
        if scaled:
            ids = greedy_ctc_ids(ctc_logits, ctc_lengths, self.backbone.config.text_vocab_size, self.specials.base_vocab_size)
            lengths = torch.tensor([len(t) for t in ids], dtype=torch.float32, device=device)
            positions = decoding_positions(prompt, torch.ones_like(lengths, dtype=torch.bool), lengths)
        if ctc_weight > 0:
            log_probs = ctc_logits.float().log_softmax(-1)  # (B, L, V + 1), shared by the beam's rows of each example
            scorer = CTCPrefixScorer(log_probs, ctc_lengths, blank=self.backbone.config.text_vocab_size, rows_per_example=beam)
            rescorer = JointCTCRescorer(scorer, ctc_weight, self.specials.base_vocab_size, self.specials.eos)
        ratio = config.max_tokens_per_frame if asr else None  # an ASR cap: answers are not transcripts of the audio
        frames = prompt["feature_mask"].sum(dim=1)  # (B,)
        word_lm = self._word_lm_fusion(prompt["input_ids"].shape[0] * beam) if asr else None
        if beam > 1 or word_lm is not None:
            caps = None if ratio is None else (ratio * frames.float()).ceil().long()
            return beam_search(self.backbone, prompt, config.max_new_tokens, beam, allowed, self.specials.eos,
                               max_lengths=caps, positions=positions, rescorer=rescorer, word_lm=word_lm)
        rows = generate(self.backbone, prompt, config.max_new_tokens, allowed, (self.specials.eos,),
                        positions=positions, rescorer=rescorer).tolist()
        if ratio is not None:  # greedy rows are independent: cutting one after decoding = stopping it there
            rows = [row[: max(1, math.ceil(ratio * n))] for row, n in zip(rows, frames.tolist())]
        return rows

    def _prompt_ctc(self, prompt: dict) -> tuple[Tensor, Tensor]:
        """CTC logits (B, L, V + 1) and frames (B,) of each prompt row (every row must hold audio)."""
        if prompt.get("audio_features") is None or not bool(prompt["feature_mask"].any(dim=1).all()):
            raise ValueError("decoding with the CTC head needs audio frames in every prompt row")
        return self.backbone.ctc_logits(prompt["audio_features"], prompt["feature_mask"])

    def _word_lm_fusion(self, num_rows: int) -> WordLMFusion | None:
        """The configured word LM's fusion state for `num_rows` beam rows; None without one."""
        if self.asr.word_lm is None:
            return None
        lm, trie = counted_word_lm(self.asr.word_lm)
        return WordLMFusion(lm, trie, self.asr.word_lm, num_rows, self.backbone.config.vocab_size, self.specials.eos,
                            self.device)

    def ctc_transcripts(self, ctc_logits: Tensor, ctc_lengths: Tensor) -> list[str]:
        """Greedy CTC transcript of each audio segment (R, L, V + 1) of the encoder's CTC head."""
        blank, base = self.backbone.config.text_vocab_size, self.specials.base_vocab_size
        return [self.tokenizer.decode(ids) for ids in greedy_ctc_ids(ctc_logits, ctc_lengths, blank, base)]

    @torch.no_grad()
    def units(
        self,
        batch: dict,
        max_new_tokens: int,
        num_units: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Audio units (unit indices, not ids) generated for the TTS prompts of a collated batch.

        Args:
            batch: collated TTS examples (each prompt ends with <audio_start>).
            max_new_tokens: decoding budget in units.
            num_units: only the first `num_units` units (the data's) or <audio_end> may be emitted.
            temperature: 0 = greedy, else sampled.
            top_k: sample among the k most likely only.
            generator: RNG of the sampling.
        """
        V = self.backbone.config.text_vocab_size
        allowed = torch.zeros(self.backbone.config.vocab_size, dtype=torch.bool, device=self.device)
        allowed[V : V + num_units] = True
        allowed[self.specials.audio_end] = True
        prompt = prompts_from_batch(batch, self.specials.pad)
        positions = None
        if self.units_per_token is not None:
            positions = unit_decoding_positions(prompt, self.units_per_token, self.specials.audio_start)
        with eval_mode(self.backbone):
            ids = generate(self.backbone, prompt, max_new_tokens, allowed, (self.specials.audio_end,),
                           temperature=temperature, top_k=top_k, generator=generator, positions=positions)
        return [row[row >= V] - V for row in ids.cpu()]

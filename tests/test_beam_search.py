"""Beam search: one beam is greedy decoding, a wide beam finds the exhaustive optimum of the joint score,
length caps end hypotheses, and the stage module decodes ASR with it."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import build_config
from lightning_most.decoding import ASRDecodingConfig
from lightning_most.decoding.beam_search import beam_search
from lightning_most.decoding.ctc_prefix import CTCPrefixScorer, JointCTCRescorer
from lightning_most.decoding.generation import generate, prompts_from_batch
from lightning_most.layouts import asr_example, collate
from lightning_most.positions import TranscriptPositionsConfig, decoding_positions
from lightning_most.stages import CTCConfig, Stage1Module
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

TOK = ByteTokenizer()
SPECIALS = SpecialTokens(TOK.base_vocab_size)
ENCODER = {"num_conv_layers": 1, "num_layers": 1, "ctc_head": True}
FEW = (ord("a"), ord("b"), ord("c"))  # a 3-letter alphabet (+ <eos>), so every transcript can be enumerated


def _model() -> MoSTBackbone:
    torch.manual_seed(0)
    model = MoSTBackbone(build_config("tiny", {"num_audio_units": 32, "audio_encoder": ENCODER})).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3) if p.dim() > 1 else None
    return model


def _prompt(cfg, frames=(14, 9)) -> dict:
    g = torch.Generator().manual_seed(1)
    examples = [asr_example(TOK.encode("ab"), SPECIALS, cfg.text_vocab_size,
                            features=torch.randn(n, cfg.audio_feature_dim, generator=g)) for n in frames]
    return prompts_from_batch(collate(examples, SPECIALS.pad), SPECIALS.pad)


def _allowed(cfg, ids=FEW) -> torch.Tensor:
    allowed = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    allowed[list(ids)] = True
    allowed[SPECIALS.eos] = True
    return allowed


def _rescorer(model, prompt, beam: int, weight: float = 0.5) -> JointCTCRescorer:
    logits, lengths = model.ctc_logits(prompt["audio_features"], prompt["feature_mask"])
    scorer = CTCPrefixScorer(logits.log_softmax(-1), lengths, blank=model.config.text_vocab_size, rows_per_example=beam)
    return JointCTCRescorer(scorer, weight, SPECIALS.base_vocab_size, SPECIALS.eos)


@torch.no_grad()
def _joint_score(model, prompt, row: int, ids: list[int], ended: bool, weight: float = 0.5) -> float:
    """The joint score of one transcript by teacher forcing (no cache, no beam): the sum beam search ranks by."""
    one = {k: v[row : row + 1] for k, v in prompt.items() if k != "audio_features"}
    counts = prompt["feature_mask"].sum(dim=1).tolist()
    one["audio_features"] = torch.split(prompt["audio_features"], counts)[row]
    rescorer = _rescorer(model, one, 1, weight)
    total, seq = 0.0, dict(one)
    for t, token in enumerate(ids + ([SPECIALS.eos] if ended else [])):
        logits = model(seq["input_ids"], seq["modality_ids"], seq["attention_mask"], seq["audio_features"],
                       seq["feature_mask"]).logits[:, -1]
        total += float(rescorer(logits)[0, token])
        rescorer.advance(torch.tensor([token]))
        new = torch.tensor([[token]])
        seq = {**seq, "input_ids": torch.cat([seq["input_ids"], new], 1),
               "modality_ids": torch.cat([seq["modality_ids"], torch.zeros_like(new)], 1),
               "feature_mask": torch.cat([seq["feature_mask"], torch.zeros_like(new, dtype=torch.bool)], 1),
               "attention_mask": torch.cat([seq["attention_mask"], torch.ones_like(new, dtype=torch.bool)], 1)}
    return total


def test_one_beam_is_greedy_decoding() -> None:
    model = _model()
    prompt = _prompt(model.config)
    allowed = _allowed(model.config, range(SPECIALS.base_vocab_size))
    positions = decoding_positions(prompt, torch.ones(2, dtype=torch.bool), torch.tensor([6.0, 4.0]))
    greedy = generate(model, prompt, 12, allowed, (SPECIALS.eos,), positions=positions, rescorer=_rescorer(model, prompt, 1))
    expected = [[i for i in row if 0 <= i < SPECIALS.base_vocab_size] for row in greedy.tolist()]
    got = beam_search(model, prompt, 12, 1, allowed, SPECIALS.eos, positions=positions, rescorer=_rescorer(model, prompt, 1))
    assert got == expected


def test_a_wide_beam_finds_the_best_joint_score_of_all_transcripts() -> None:
    model = _model()
    prompt = _prompt(model.config)
    steps = 3
    # Every transcript of at most 3 letters, ended by <eos> before the cap or cut by it at 3.
    candidates = [(list(ids), len(ids) < steps) for n in range(steps + 1) for ids in itertools.product(FEW, repeat=n)]
    beam = len(FEW) ** steps  # wide enough never to prune
    got = beam_search(model, prompt, 8, beam, _allowed(model.config), SPECIALS.eos,
                      max_lengths=torch.tensor([steps, steps]), rescorer=_rescorer(model, prompt, beam))
    for row in range(2):
        scores = {tuple(ids): _joint_score(model, prompt, row, ids, ended) for ids, ended in candidates}
        best = max(scores, key=scores.get)
        assert tuple(got[row]) == best
        assert scores[best] > sorted(scores.values())[-2] - 1e-9  # a unique optimum, not a tie


def test_beam_search_keeps_the_decoders_order_without_ctc_and_checks_its_arguments() -> None:
    model = _model()
    prompt = _prompt(model.config)
    allowed = _allowed(model.config)
    out = beam_search(model, prompt, 5, 4, allowed, SPECIALS.eos)
    assert len(out) == 2 and all(set(row) <= set(FEW) and len(row) <= 5 for row in out)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, prompt, 5, 0, allowed, SPECIALS.eos)
    allowed[SPECIALS.eos] = False
    with pytest.raises(ValueError, match="eos"):
        beam_search(model, prompt, 5, 2, allowed, SPECIALS.eos)


def asr_batch(module: Stage1Module) -> dict:
    """Builds the module's backbone; a collated batch of two ASR examples ("hello" over 12 frames, "hi" over 6)."""
    module.configure_model()
    g = torch.Generator().manual_seed(0)
    V, F = module.config.text_vocab_size, module.config.audio_feature_dim
    examples = [asr_example(TOK.encode(t), SPECIALS, V, features=torch.randn(n, F, generator=g)) for t, n in (("hello", 12), ("hi", 6))]
    return collate(examples, SPECIALS.pad)


def test_stage_module_decodes_asr_with_a_beam() -> None:
    module = Stage1Module(backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER}, ctc=CTCConfig(weight=1.0),
                          transcript_positions=TranscriptPositionsConfig("audio_scaled"),
                          asr_decoding=ASRDecodingConfig(max_new_tokens=10, max_tokens_per_frame=0.5, ctc_weight=0.5,
                                                         beam_size=3))
    batch = asr_batch(module)  # builds the backbone
    hyps = module.decoder.transcribe(batch)
    assert len(hyps) == 2 and 1 <= len(hyps[1]) <= 3  # ceil(0.5 x 6) bytes (random weights: maybe not UTF-8)
    with pytest.raises(ValueError, match="asr_decoding.beam_size"):
        ASRDecodingConfig(beam_size=0)

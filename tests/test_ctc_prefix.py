"""CTC prefix scores: exact sequence probabilities, a proper distribution over continuations, and joint
decoding that the CTC head can steer away from a decoder that is wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_most.decoding import ASRDecodingConfig, Decoder
from lightning_most.decoding.ctc_prefix import CTCPrefixScorer, JointCTCRescorer
from lightning_most.layouts import asr_example, collate
from lightning_most.stages import CTCConfig, Stage1Module
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens
from tests.test_bidirectional_encoder import _AlwaysA  # a decoder that only says "A"

BLANK, NUM_TOKENS = 5, 5


def _posteriors(lengths=(12, 9, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(len(lengths), max(lengths), NUM_TOKENS + 1, generator=g).log_softmax(-1), torch.tensor(lengths)


def _prefix(scorer: CTCPrefixScorer, tokens: list[list[int]], steps: int) -> None:
    for step in range(steps):
        token = torch.tensor([row[step] for row in tokens])
        scorer.advance(token, scorer.extension_scores(NUM_TOKENS).gather(1, token[:, None])[:, 0])


def test_end_score_is_the_ctc_probability_of_the_whole_transcript() -> None:
    log_probs, lengths = _posteriors()
    transcripts = [[1, 1, 2], [3, 0, 3], [4, 4, 4]]  # repeats need a blank between them
    scorer = CTCPrefixScorer(log_probs, lengths, BLANK)
    _prefix(scorer, transcripts, 3)
    for b, target in enumerate(transcripts):
        nll = F.ctc_loss(log_probs[b : b + 1, : lengths[b]].transpose(0, 1), torch.tensor([target]), lengths[b : b + 1],
                         torch.tensor([3]), blank=BLANK, reduction="sum")
        assert abs(scorer.end_scores()[b].item() + nll.item()) < 1e-4


def test_continuations_and_the_end_share_the_prefix_probability() -> None:
    log_probs, lengths = _posteriors()
    scorer = CTCPrefixScorer(log_probs, lengths, BLANK)
    for token in ([1, 3, 4], [1, 0, 4], [2, 2, 0]):
        # psi(h) = sum_c psi(h + c) + P(transcript == h)
        everything = torch.cat([scorer.extension_scores(NUM_TOKENS), scorer.end_scores()[:, None]], dim=1)
        torch.testing.assert_close(torch.logsumexp(everything, dim=1), scorer.score, atol=1e-6, rtol=0)
        t = torch.tensor(token)
        scorer.advance(t, scorer.extension_scores(NUM_TOKENS).gather(1, t[:, None])[:, 0])
    assert (scorer.score < 0).all()


def test_joint_decoding_follows_a_confident_ctc_head_over_a_wrong_decoder(monkeypatch) -> None:
    tok = ByteTokenizer()
    specials = SpecialTokens(tok.base_vocab_size)
    module = Stage1Module(
        backbone_overrides={"num_audio_units": 32, "audio_encoder": {"num_layers": 1, "ctc_head": True}},
        ctc=CTCConfig(weight=1.0), asr_decoding=ASRDecodingConfig(max_new_tokens=8, ctc_weight=0.8),
    )  # fmt: skip
    module.configure_model()
    module.backbone.text_head = _AlwaysA(module.config.text_vocab_size)  # a decoder that only says "A"
    V = module.config.text_vocab_size
    frames = 10
    batch = collate([asr_example([], specials, V, features=torch.randn(frames, module.config.audio_feature_dim))],
                    specials.pad)
    path = [ord("h"), ord("h"), V, ord("i"), V, V, V, V, V, V]  # CTC spells "hi" (V = blank)
    logits = torch.full((1, frames, V + 1), -20.0)
    logits[0, torch.arange(frames), torch.tensor(path)] = 0.0
    monkeypatch.setattr(Decoder, "_prompt_ctc", lambda decoder, prompt: (logits, torch.tensor([frames])))
    assert module.decoder.transcribe(batch) == ["hi"]  # and it stops: <eos> is where the CTC path ends
    module.asr_decoding.ctc_weight = 0.0
    assert module.decoder.transcribe(batch) == ["A" * 8]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        JointCTCRescorer(CTCPrefixScorer(logits, torch.tensor([frames]), V), 0.0, 256, specials.eos)
    with pytest.raises(ValueError, match="asr_decoding.ctc_weight > 0 decodes with the CTC head"):
        Stage1Module(asr_decoding=ASRDecodingConfig(ctc_weight=0.5))

"""The fast ASR decoding (issue 16) gives the transcripts of the decoding before it (`tests/decoding_reference.py`):
on random tiny models with every combination of beam, joint CTC and word LM, and on the tiny trained checkpoint."""

from __future__ import annotations

import pytest
import torch

from lightning_most.commands.common import read_audio
from lightning_most.decoding import ASRDecodingConfig, WordLMConfig, ctc_prefix
from lightning_most.decoding.ctc_prefix import CTCPrefixScorer, JointCTCRescorer
from lightning_most.inference import MostInference
from lightning_most.layouts import asr_example, collate
from lightning_most.positions import TranscriptPositionsConfig
from lightning_most.stages import CTCConfig, Stage1Module
from tests.decoding_reference import ReferenceCTCPrefixScorer, reference_transcribe
from tests.fixtures_checkpoint import TrainedRun
from tests.test_beam_search import ENCODER, SPECIALS

pytest_plugins = ["tests.fixtures_checkpoint"]


def _ctc_mismatches(scale: float) -> int:
    """Candidate and end scores of the fast scorer that differ from the direct sum (> 1e-9), over 12 beam steps."""
    g = torch.Generator().manual_seed(0)
    B, K, T, C = 3, 4, 40, 20
    log_probs = (scale * torch.randn(B, T, C + 1, generator=g)).log_softmax(-1)  # larger scale: peakier
    lengths = torch.tensor([40, 25, 9])
    fast = CTCPrefixScorer(log_probs, lengths, C, rows_per_example=K)
    slow = ReferenceCTCPrefixScorer(log_probs.repeat_interleave(K, 0), lengths.repeat_interleave(K), C)
    mismatches = 0
    for _ in range(12):
        a, b = fast.extension_scores(C), slow.extension_scores(C)
        both = torch.isfinite(a) & torch.isfinite(b)
        mismatches += int((torch.isfinite(a) != torch.isfinite(b)).sum()) + int(((a - b).abs() > 1e-9)[both].sum())
        rows = torch.arange(B * K) // K * K + torch.randint(0, K, (B * K,), generator=g)
        tokens = torch.randint(0, C, (B * K,), generator=g)
        tokens[::2] = slow.last.index_select(0, rows)[::2].clamp(min=0)  # repeats of the last token too
        for scorer in (fast, slow):
            scorer.reorder(rows)
            scorer.advance(tokens, scorer.extension_scores(C).gather(1, tokens[:, None])[:, 0])
        mismatches += int(((fast.end_scores() - slow.end_scores()).abs() > 1e-9).sum())
    return mismatches


@pytest.mark.parametrize("scale", [8.0, 400.0])
def test_ctc_candidate_scores_agree_with_the_direct_sum_also_for_improbable_prefixes(scale: float) -> None:
    assert _ctc_mismatches(scale) == 0


def test_the_ctc_underflow_fallback_is_what_keeps_the_peakiest_scores_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # Log-probs spanning thousands of nats: a block's scaled sum can underflow where it alone decides a score.
    monkeypatch.setattr(ctc_prefix, "SMALLEST_SCALED_SUM", 1e-320)  # (almost) never recompute
    assert _ctc_mismatches(400.0) > 0


def test_bounded_ctc_scores_are_upper_bounds_and_refine_to_the_exact_ones_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(3)
    B, K, T, C = 2, 4, 60, 20
    V, eos = C + 4, C + 1
    log_probs = (400 * torch.randn(B, T, C + 1, generator=g)).log_softmax(-1)  # peaky enough to underflow
    lengths = torch.tensor([60, 33])
    exact = JointCTCRescorer(CTCPrefixScorer(log_probs, lengths, C, rows_per_example=K), 0.5, C, eos)
    lazy = JointCTCRescorer(CTCPrefixScorer(log_probs, lengths, C, rows_per_example=K), 0.5, C, eos)
    refined = 0
    for _ in range(6):
        logits = torch.randn(B * K, V, generator=g)
        want, got = exact(logits), lazy(logits, exact=False)
        doubtful = lazy.doubtful
        assert torch.equal(got[~doubtful], want[~doubtful])
        assert bool((got[doubtful] >= want[doubtful]).all())  # bounds
        rows, ids = doubtful.nonzero(as_tuple=True)
        refined += rows.numel()
        assert torch.equal(lazy.refine(rows, ids), want[rows, ids])  # as the exact call computes them
        assert torch.equal(lazy._extension, exact._extension)
        tokens = torch.randint(0, C, (B * K,), generator=g)
        for rescorer in (exact, lazy):
            rescorer.advance(tokens)
    assert refined > 0  # the case exercised the bounds


@pytest.mark.parametrize("beam, ctc_weight, with_lm, scaled", [
    (4, 0.5, True, True), (3, 0.5, False, False), (2, 0.0, True, True), (1, 0.3, True, False),
])  # fmt: skip
def test_fast_decoding_transcribes_like_the_reference(tmp_path, beam, ctc_weight, with_lm, scaled) -> None:
    (tmp_path / "lm.txt").write_text("hello world\nhello there\nthe cat sat on the mat\n")
    lm = WordLMConfig(text_files=[str(tmp_path / "lm.txt")], wordfreq_words=0, wordfreq_weight=0.0, weight=0.5,
                      word_bonus=0.5, oov_log_prob=-5.0) if with_lm else None  # fmt: skip
    torch.manual_seed(0)
    module = Stage1Module(
        backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER}, ctc=CTCConfig(weight=1.0),
        transcript_positions=TranscriptPositionsConfig("audio_scaled" if scaled else "sequential"),
        asr_decoding=ASRDecodingConfig(max_new_tokens=16, max_tokens_per_frame=1.0, ctc_weight=ctc_weight,
                                       beam_size=beam, word_lm=lm),
    )  # fmt: skip
    module.configure_model()
    for p in module.backbone.parameters():  # random weights far from uniform: distinct transcripts per example
        p.data.normal_(0, 0.3) if p.dim() > 1 else None
    g = torch.Generator().manual_seed(1)
    V, F = module.config.text_vocab_size, module.config.audio_feature_dim
    examples = [asr_example([], SPECIALS, V, features=torch.randn(n, F, generator=g)) for n in (12, 9, 16, 5)]
    batch = collate(examples, SPECIALS.pad)
    fast, reference = module.decoder.transcribe(batch), reference_transcribe(module.decoder, batch)
    assert fast == reference
    assert len(set(fast)) > 1 and any(len(t) > 3 for t in fast)  # not a degenerate case where all agree trivially


def test_fast_decoding_transcribes_the_trained_checkpoint_like_the_reference(trained_run: TrainedRun) -> None:
    inference = MostInference.from_checkpoint(trained_run.checkpoint)  # the quickstart's beam 8, CTC 0.5, word LM
    module = inference.module
    assert module.asr_decoding.beam_size == 8 and module.asr_decoding.word_lm is not None
    examples = [asr_example([], module.specials, module.config.text_vocab_size,
                            features=inference.input_features(read_audio(path)))
                for path in trained_run.test_wavs]  # fmt: skip
    batch = inference._batch(examples)
    fast = module.decoder.transcribe(batch)
    assert fast == reference_transcribe(module.decoder, batch)
    assert fast == inference.transcribe([read_audio(path) for path in trained_run.test_wavs])


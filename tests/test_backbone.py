"""Backbone: shapes, padding, presets, overfitting a mixed batch, KV-cache generation."""

from __future__ import annotations

import pytest
import torch

from lightning_most.attention import KVCache
from lightning_most.backbone import MoSTBackbone, next_token_loss
from lightning_most.config import PRESETS, build_config
from lightning_most.decoding.generation import generate, prompts_from_batch
from lightning_most.layouts import asr_example, collate, text_lm_example, tts_example
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

TOK = ByteTokenizer()
SPECIALS = SpecialTokens(TOK.base_vocab_size)


def _tiny(**overrides) -> MoSTBackbone:
    cfg = build_config("tiny", {"num_audio_units": 32, **overrides})
    return MoSTBackbone(cfg)


def _mixed_examples(cfg) -> list:
    V = cfg.text_vocab_size
    return [
        asr_example(TOK.encode("hello world"), SPECIALS, V, features=torch.randn(12, cfg.audio_feature_dim)),
        tts_example(TOK.encode("good day"), torch.randint(0, cfg.num_audio_units, (14,)), SPECIALS, V),
        text_lm_example(TOK.encode("the cat sat on the mat"), SPECIALS),
    ]


def _mixed_batch(cfg) -> dict:
    return collate(_mixed_examples(cfg), SPECIALS.pad)


def _forward(model, batch):
    return model(batch["input_ids"], batch["modality_ids"], batch["attention_mask"],
                 batch.get("audio_features"), batch["feature_mask"])


def test_forward_shapes_and_routing_stats() -> None:
    model = _tiny()
    batch = _mixed_batch(model.config)
    out = _forward(model, batch)
    B, T = batch["input_ids"].shape
    assert out.logits.shape == (B, T, model.config.vocab_size)
    assert len(out.routing) == model.config.num_layers - model.config.first_k_dense
    n_tokens = int(batch["attention_mask"].sum())
    for stats in out.routing:
        assert stats.tokens.sum() == n_tokens
        assert stats.expert_load.sum() == n_tokens * model.config.moe.top_k
    # With a KV cache (decoding) nothing logs routing: the MoE layers skip their statistics.
    cached = model(batch["input_ids"], batch["modality_ids"], batch["attention_mask"], batch.get("audio_features"),
                   batch["feature_mask"], cache=KVCache(model.config.num_layers))
    assert cached.routing == []
    torch.testing.assert_close(cached.logits, out.logits)


def test_bf16_autocast_forward_and_backward_with_audio_frames() -> None:
    """Under bf16 autocast (Lightning's bf16-mixed) a mixed batch runs forward and backward, and its logits stay
    near the fp32 ones. (The projected frames come out bf16 into fp32 embeddings: CUDA's `masked_scatter_`
    refused that, first seen on a lent H200; the CPU's casts, so here the routing statistics are what failed.)"""
    torch.manual_seed(0)
    model = _tiny()
    batch = _mixed_batch(model.config)
    reference = _forward(model, batch).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _forward(model, batch)
        loss = next_token_loss(out.logits, batch["labels"])
    loss.backward()
    assert model.embed_tokens.weight.grad is not None
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(out.logits.float()[real], reference[real], atol=0.1, rtol=0.05)


def test_right_padding_does_not_change_real_positions() -> None:
    model = _tiny().eval()
    examples = _mixed_examples(model.config)
    padded = _forward(model, collate(examples, SPECIALS.pad)).logits
    for i, example in enumerate(examples):
        alone = _forward(model, collate([example], SPECIALS.pad)).logits[0]
        torch.testing.assert_close(padded[i, : len(example)], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_fused_causal_attention_equals_the_explicit_mask_at_real_positions(attention: str, monkeypatch) -> None:
    from lightning_most import backbone as backbone_module
    from lightning_most.attention import attention_mask, causal_mask_or_none

    model = _tiny(attention={"kind": attention})
    batch = _mixed_batch(model.config)  # right-padded: the fused path applies
    assert causal_mask_or_none(batch["attention_mask"], batch["input_ids"].shape[1]) is None
    real = batch["attention_mask"]

    def loss_and_grads():
        model.zero_grad()
        out = _forward(model, batch)
        (out.logits[real].square().mean() + out.aux_loss).backward()
        return out.logits[real].detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fused, fused_grads = loss_and_grads()
    monkeypatch.setattr(backbone_module, "causal_mask_or_none", attention_mask)  # always the explicit mask
    explicit, explicit_grads = loss_and_grads()
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)
    for a, b in zip(fused_grads, explicit_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # Left padding or a cache keep the explicit mask.
    left = real.flip(1)
    assert causal_mask_or_none(left, left.shape[1]) is not None
    assert causal_mask_or_none(real, 1) is not None


@pytest.mark.parametrize("variant", ["mamoe", "dense"])
def test_overfits_one_mixed_batch(variant: str) -> None:
    model = _tiny(moe={"variant": variant})
    batch = _mixed_batch(model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(80):
        out = _forward(model, batch)
        loss = next_token_loss(out.logits, batch["labels"])
        losses.append(loss.item())
        (loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_generation_with_kv_cache_equals_without(attention: str) -> None:
    overrides = {"attention": {"kind": attention, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}}
    model = _tiny(**overrides).eval()
    for p in model.parameters():  # a less uniform model makes greedy choices sensitive to any error
        p.data.normal_(0, 0.2) if p.dim() > 1 else None
    batch = _mixed_batch(model.config)
    prompt = prompts_from_batch(batch, SPECIALS.pad)
    with_cache = generate(model, prompt, 12, use_cache=True)
    without = generate(model, prompt, 12, use_cache=False)
    assert with_cache.shape == (3, 12)
    assert torch.equal(with_cache, without)


def test_generation_respects_allowed_ids_and_stops() -> None:
    model = _tiny().eval()
    prompt = prompts_from_batch(_mixed_batch(model.config), SPECIALS.pad)
    allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    allowed[[SPECIALS.eos, 65, 66]] = True
    out = generate(model, prompt, 6, allowed_ids=allowed, stop_ids=(SPECIALS.eos,))
    produced = out[out >= 0]
    assert set(produced.tolist()) <= {SPECIALS.eos, 65, 66}
    for row in out.tolist():  # after <eos> a row holds only -1
        if SPECIALS.eos in row:
            assert all(v == -1 for v in row[row.index(SPECIALS.eos) + 1 :])


def test_presets_have_their_published_sizes() -> None:
    with torch.device("meta"):
        lite = MoSTBackbone(PRESETS["deepseek-v2-lite"])
        llama = MoSTBackbone(PRESETS["llama-3.2-3b"])
        small = MoSTBackbone(PRESETS["small"])
        tiny = MoSTBackbone(PRESETS["tiny"])
    # DeepSeek-V2-Lite: 15.7B total (ours adds 500 unit rows, the unit head and the audio projector).
    assert abs(lite.num_parameters() / 15.7e9 - 1) < 0.01
    # Llama-3.2-3B: 3.21B with tied embeddings.
    assert abs(llama.num_parameters() / 3.21e9 - 1) < 0.02
    assert 80e6 < small.num_parameters() < 130e6
    assert 1e6 < tiny.num_parameters() < 10e6
    assert lite.config.first_k_dense == 1 and lite.config.moe.num_routed_experts == 64


def test_contiguous_grad_hands_the_head_a_contiguous_gradient_of_equal_values() -> None:
    """The concatenated logits' backward gives the text part a strided slice; ContiguousGrad makes it dense."""
    from lightning_most.backbone import ContiguousGrad

    text = torch.randn(2, 3, 16, requires_grad=True)
    audio = torch.randn(2, 3, 5, requires_grad=True)
    seen = []
    for wrap in (False, True):
        t = text * 1.0
        t.register_hook(lambda g: seen.append((g.is_contiguous(), g.clone())))
        (torch.cat([ContiguousGrad.apply(t) if wrap else t, audio], dim=-1) ** 2).sum().backward()
    (plain_contiguous, plain), (wrapped_contiguous, wrapped) = seen
    assert not plain_contiguous and wrapped_contiguous
    assert torch.equal(plain, wrapped)

"""The preallocated KV cache (`attention.KVCache`): in-place growth, beam reordering that copies only moved rows,
and MLA's two cache layouts (`AttentionConfig.cache_latent`) giving the same logits."""

from __future__ import annotations

import pytest
import torch

from lightning_most.attention import KVCache, set_cache_latent
from lightning_most.backbone import MoSTBackbone
from lightning_most.config import build_config


def test_cache_grows_in_place_and_beyond_its_capacity() -> None:
    cache = KVCache(num_layers=1, capacity=5)
    layer = cache.layers[0]
    steps = [torch.randn(2, T, 3) for T in (4, 1, 1, 3)]  # 9 positions: past the capacity of 5
    for i, step in enumerate(steps):
        (full,) = layer.update(step)
        assert torch.equal(full, torch.cat(steps[: i + 1], dim=1))
    assert cache.length == 9 and layer.buffers[0].shape[1] >= 9


def test_reorder_equals_selecting_whole_rows_when_the_prompt_is_shared() -> None:
    """Rows of an example share the first P positions; reorder with shared_positions=P = index_select of all."""
    g = torch.Generator().manual_seed(0)
    P, B, K = 6, 2, 3
    cache = KVCache(2, capacity=P + 8)
    prompt = torch.randn(B, P, 4, generator=g)
    for layer in cache.layers:
        layer.update(prompt)
    cache.reorder(torch.arange(B).repeat_interleave(K))  # the prompt rows repeated over the beam
    expected = [prompt.repeat_interleave(K, dim=0)] * len(cache.layers)
    for _ in range(5):
        new = [torch.randn(B * K, 1, 4, generator=g) for _ in cache.layers]
        for layer, n in zip(cache.layers, new):
            layer.update(n)
        index = torch.arange(B).repeat_interleave(K) * K + torch.randint(0, K, (B * K,), generator=g)
        index[0] = 0  # some rows keep their own prefix
        cache.reorder(index, shared_positions=P)
        expected = [torch.cat([e, n], dim=1).index_select(0, index) for e, n in zip(expected, new)]
        for layer, e in zip(cache.layers, expected):
            assert torch.equal(layer.buffers[0][:, : cache.length], e)


@pytest.mark.parametrize("left_padding", [False, True])
def test_latent_and_up_projected_mla_caches_give_the_same_logits(left_padding: bool) -> None:
    torch.manual_seed(0)
    model = MoSTBackbone(build_config("tiny", {"num_layers": 2, "num_audio_units": 32})).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2) if p.dim() > 1 else None
    ids = torch.randint(0, 256, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    if left_padding:
        mask[0, :3] = False
    modality = torch.zeros(3, 7, dtype=torch.long)
    steps = torch.randint(0, 256, (3, 4))
    logits = {}
    for latent in (False, True):
        set_cache_latent(model, latent)
        cache = KVCache(len(model.layers), capacity=11)
        out = [model(ids, modality, mask, cache=cache).logits]
        full_mask = mask
        for t in range(steps.shape[1]):
            full_mask = torch.cat([full_mask, torch.ones(3, 1, dtype=torch.bool)], dim=1)
            out.append(model(steps[:, t : t + 1], modality[:, :1], full_mask, cache=cache).logits)
        logits[latent] = torch.cat(out, dim=1)
        per_position = sum(buffer[0, 0].numel() for buffer in cache.layers[0].buffers)
        assert per_position == (32 + 16 if latent else 4 * 2 * (16 + 16))  # r + rope, or H * 2 * (nope + rope)
    # logits of magnitude ~10: float32 rounding of another summation order reaches ~1e-5
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-4)
    uncached = model(torch.cat([ids, steps], dim=1), torch.zeros(3, 11, dtype=torch.long), full_mask).logits
    torch.testing.assert_close(logits[True], uncached, rtol=1e-5, atol=1e-4)

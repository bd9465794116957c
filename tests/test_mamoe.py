"""MAMoE routing invariants, dispatch against a per-token loop, aux loss by hand, variants."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_most.config import MoEConfig
from lightning_most.mamoe import MoEBlock, grouped_matmul, load_balancing_loss


def _block(**kw) -> MoEBlock:
    cfg = MoEConfig(**{"num_routed_experts": 8, "num_shared_experts": 1, "top_k": 2, "expert_intermediate_size": 16, **kw})
    block = MoEBlock(16, cfg)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block


@st.composite
def layouts(draw):
    E = draw(st.integers(2, 12))
    M = draw(st.integers(1, 3))
    # Random (possibly overlapping) non-empty groups per modality.
    groups = [sorted(draw(st.sets(st.integers(0, E - 1), min_size=1, max_size=E))) for _ in range(M)]
    k = draw(st.integers(1, min(map(len, groups))))
    gate = draw(st.sampled_from(["masked_softmax", "group_renormalized"]))
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**16))
    return E, M, groups, k, gate, B, T, seed


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_no_token_routes_outside_its_group(layout) -> None:
    E, M, groups, k, gate, B, T, seed = layout
    torch.manual_seed(seed)
    cfg = MoEConfig(num_routed_experts=E, num_shared_experts=1, top_k=k, expert_intermediate_size=16,
                    num_modalities=M, expert_groups=groups, gate=gate)
    block = MoEBlock(16, cfg)
    torch.nn.init.normal_(block.router.weight, std=5.0)  # peaked gates: stress the mask
    h = torch.randn(B * T, 16)
    modality = torch.randint(0, M, (B * T,))
    indices, weights, scores = block.router(h, modality)
    for t in range(B * T):
        allowed = set(groups[modality[t]])
        assert set(indices[t].tolist()) <= allowed
        assert len(set(indices[t].tolist())) == k
        off_group = [e for e in range(E) if e not in allowed]
        assert torch.all(scores[t, off_group] == 0)
    assert torch.all(weights >= 0)
    if gate == "group_renormalized":
        torch.testing.assert_close(scores.sum(-1), torch.ones(B * T))


def test_masked_softmax_is_not_renormalised_and_renormalized_gate_is() -> None:
    h, modality = torch.randn(10, 16), torch.randint(0, 2, (10,))
    _, _, masked = _block(gate="masked_softmax").router(h, modality)
    assert torch.all(masked.sum(-1) < 1.0)  # mass on the other group is dropped, not moved
    _, _, renorm = _block(gate="group_renormalized").router(h, modality)
    torch.testing.assert_close(renorm.sum(-1), torch.ones(10))


def test_vanilla_ignores_modality() -> None:
    block = _block(variant="vanilla")
    h = torch.randn(2, 5, 16)
    valid = torch.ones(2, 5, dtype=torch.bool)
    y_text, _, _ = block(h, torch.zeros(2, 5, dtype=torch.long), valid)
    y_audio, _, _ = block(h, torch.ones(2, 5, dtype=torch.long), valid)
    torch.testing.assert_close(y_text, y_audio)
    # ...while MoST's masked routing does depend on it.
    most = _block()
    most.load_state_dict(block.state_dict())
    y_text, _, _ = most(h, torch.zeros(2, 5, dtype=torch.long), valid)
    y_audio, _, _ = most(h, torch.ones(2, 5, dtype=torch.long), valid)
    assert not torch.allclose(y_text, y_audio)


def test_noshared_has_no_shared_path() -> None:
    block = _block(variant="noshared", num_shared_experts=2)
    assert block.shared_experts is None
    assert not any("shared" in name for name, _ in block.named_parameters())
    # With all routed experts zeroed the output is exactly zero: nothing else contributes.
    torch.nn.init.zeros_(block.experts.down_proj)
    y, _, _ = block(torch.randn(1, 4, 16), torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    assert torch.count_nonzero(y) == 0


def _naive_moe(block: MoEBlock, h: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Per-token, per-expert loop: the reference semantics."""
    B, T, d = h.shape
    flat, mod = h.reshape(-1, d), modality.reshape(-1)
    indices, weights, _ = block.router(flat, mod)
    rows = []
    for t in range(flat.shape[0]):
        acc = block.shared_experts(flat[t]) if block.shared_experts is not None else torch.zeros(d)
        for j in range(indices.shape[1]):
            acc = acc + weights[t, j] * block.experts.expert_forward(flat[t], int(indices[t, j]))
        rows.append(acc)
    return torch.stack(rows).reshape(B, T, d)


@pytest.mark.parametrize("variant", ["mamoe", "vanilla", "noshared"])
@pytest.mark.parametrize("gate", ["masked_softmax", "group_renormalized"])
def test_sorted_dispatch_equals_per_token_loop(variant: str, gate: str) -> None:
    block = _block(variant=variant, gate=gate)
    h = torch.randn(2, 6, 16, requires_grad=True)
    modality = torch.randint(0, 2, (2, 6))
    y, _, _ = block(h, modality, torch.ones(2, 6, dtype=torch.bool))
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, [h, *block.parameters()], grad_out)

    ref_block = _block(variant=variant, gate=gate)
    ref_block.load_state_dict(block.state_dict())
    h_ref = h.detach().clone().requires_grad_()
    y_ref = _naive_moe(ref_block, h_ref, modality)
    ref_grads = torch.autograd.grad(y_ref, [h_ref, *ref_block.parameters()], grad_out)

    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [16, 15], ids=["grouped_mm", "unaligned_loop"])
def test_grouped_matmul_and_its_gradients_equal_per_expert_matmuls(width: int) -> None:
    """Both paths (torch._grouped_mm; the per-expert loop that unaligned strides take), an empty expert, and an
    expanded (stride-0) incoming gradient, which torch._grouped_mm's own backward would reject."""
    x, w = torch.randn(20, width, requires_grad=True), torch.randn(4, width, 2 * width, requires_grad=True)
    offsets = torch.cumsum(torch.tensor([3, 0, 9, 8]), 0).to(torch.int32)
    y = grouped_matmul(x, w, offsets)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = torch.cat([x_ref[:3] @ w_ref[0], x_ref[3:12] @ w_ref[2], x_ref[12:] @ w_ref[3]])
    torch.testing.assert_close(y, ref)
    grad = torch.ones(1, 1).expand_as(y)
    y.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(w.grad, w_ref.grad)  # expert 1 got no rows: a zero gradient
    assert not w.grad[1].any()


def test_grouped_matmul_custom_op_passes_opcheck() -> None:
    """The fake (meta) kernel and the autograd registration that torch.compile relies on agree with the op."""
    x, w = torch.randn(20, 16, requires_grad=True), torch.randn(4, 16, 32, requires_grad=True)
    offsets = torch.tensor([3, 3, 12, 20], dtype=torch.int32)
    torch.library.opcheck(torch.ops.lightning_most.grouped_mm.default, (x, w, offsets))


def test_aux_loss_matches_hand_computation() -> None:
    # One sequence of 2 valid tokens + 1 padding token, E = 4 experts, top-1.
    scores = torch.tensor([[[0.5, 0.3, 0.0, 0.0], [0.0, 0.0, 0.6, 0.2], [0.9, 0.0, 0.0, 0.0]]])
    indices = torch.tensor([[[0], [2], [0]]])
    valid = torch.tensor([[True, True, False]])
    # f_e = E / (k * T) * count_e = 4/2 * [1, 0, 1, 0] = [2, 0, 2, 0]
    # P_e = mean of scores over the 2 valid tokens = [0.25, 0.15, 0.3, 0.1]
    # loss = alpha * sum f * P = 0.01 * (2 * 0.25 + 2 * 0.3) = 0.011
    loss = load_balancing_loss(scores, indices, valid, alpha=0.01)
    torch.testing.assert_close(loss, torch.tensor(0.011))


def test_aux_loss_only_in_training_and_zero_when_disabled() -> None:
    block = _block()
    h, m, v = torch.randn(2, 5, 16), torch.randint(0, 2, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    assert block(h, m, v)[1] > 0
    block.eval()
    assert block(h, m, v)[1] == 0
    no_aux = _block(aux_loss_alpha=0.0)
    assert no_aux(h, m, v)[1] == 0


def test_routing_stats_count_every_assignment_per_modality() -> None:
    block = _block()
    modality = torch.tensor([[0, 0, 1, 1, 1]])
    valid = torch.tensor([[True, True, True, True, False]])
    _, _, stats = block(torch.randn(1, 5, 16), modality, valid)
    assert stats.tokens.tolist() == [2.0, 2.0]  # padding is not counted
    assert stats.expert_load.sum(dim=1).tolist() == [4.0, 4.0]  # tokens * top_k
    assert stats.expert_load[0, 4:].sum() == 0 and stats.expert_load[1, :4].sum() == 0  # halves partition
    assert torch.all(stats.entropy > 0) and torch.all(stats.entropy <= torch.log(torch.tensor(4.0)) + 1e-5)


def test_group_layouts_from_config() -> None:
    assert MoEConfig(num_routed_experts=64, top_k=6).groups() == [list(range(32)), list(range(32, 64))]
    assert MoEConfig(num_routed_experts=6, top_k=1, partition="interleaved").groups() == [[0, 2, 4], [1, 3, 5]]
    assert MoEConfig(num_routed_experts=9, num_modalities=3, top_k=1).groups()[2] == [6, 7, 8]
    assert MoEConfig(num_routed_experts=8, top_k=5).top_k == 5  # past a group of 4: extra slots at weight 0
    with pytest.raises(ValueError, match="top_k=9 must be between 1 and moe.num_routed_experts=8"):
        MoEConfig(num_routed_experts=8, top_k=9)
    with pytest.raises(ValueError, match=r"moe.expert_groups leaves modalities \[1\] without experts"):
        MoEConfig(num_routed_experts=8, top_k=1, expert_groups=[[0, 1], []])
    with pytest.raises(ValueError, match=r"expert_groups\[1\] names experts \[9\]"):
        MoEConfig(num_routed_experts=8, top_k=1, expert_groups=[[0, 1], [2, 9]])
    cfg = MoEConfig(num_routed_experts=8, top_k=2, variant="vanilla")
    assert dataclasses.replace(cfg, top_k=8).top_k == 8  # vanilla may use every expert


def _reference_moe(block: MoEBlock, h: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """DeepSeek-V2's MoEGate / the official MoST MAMoEGate, from their formulas: softmax over all experts, scores
    off the token's group set to 0 (vanilla: none), greedy top-k of those, then weights / (sum + 1e-20) if
    norm_topk_prob and top_k > 1, else weights * routed_scaling_factor. Returns y (N, d) and, per token, the
    nonzero weights by expert."""
    cfg = block.config
    scores = F.linear(h, block.router.weight).softmax(dim=-1)  # (N, E)
    masked = scores * block.router.group_mask[modality]  # (N, E), zeros off-group
    weights, indices = torch.topk(masked, cfg.top_k, dim=-1, sorted=False)  # (N, k)
    if cfg.top_k > 1 and cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    else:
        weights = weights * cfg.routed_scaling_factor
    rows, chosen = [], []
    for t in range(h.shape[0]):
        acc = block.shared_experts(h[t])
        for w, e in zip(weights[t], indices[t].tolist()):
            acc = acc + w * block.experts.expert_forward(h[t], e)
        rows.append(acc)
        chosen.append({e: w.item() for w, e in zip(weights[t], indices[t].tolist()) if w > 0})
    return torch.stack(rows), chosen


def _routed(block: MoEBlock, h: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """Our block's y (N, d) and, per token, its nonzero combination weights by expert."""
    indices, weights, _ = block.router(h, modality)
    y, _, _ = block(h[None], modality[None], torch.ones(1, h.shape[0], dtype=torch.bool))
    chosen = [{e: w.item() for w, e in zip(weights[t], indices[t].tolist()) if w > 0} for t in range(h.shape[0])]
    return y[0], chosen


def _assert_same_routing(ours: list[dict], reference: list[dict]) -> None:
    for mine, ref in zip(ours, reference):
        assert mine.keys() == ref.keys()
        for e in ref:
            assert mine[e] == pytest.approx(ref[e], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("variant", ["vanilla", "mamoe"])
def test_norm_topk_prob_equals_deepseeks_gate(variant: str) -> None:
    """norm_topk_prob: the chosen top-k weights (inside the group for mamoe) sum to 1; routed_scaling_factor is not
    applied, as in DeepSeek-V2's MoEGate (transformers' DeepseekV2TopkRouter ignores norm_topk_prob)."""
    torch.manual_seed(0)
    block = _block(variant=variant, top_k=3, norm_topk_prob=True, routed_scaling_factor=2.5)
    h, modality = torch.randn(12, 16), torch.randint(0, 2, (12,))
    with torch.no_grad():
        y, chosen = _routed(block, h, modality)
        y_ref, chosen_ref = _reference_moe(block, h, modality)
    _assert_same_routing(chosen, chosen_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for weights in chosen:
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
        if variant == "mamoe":  # renormalised over the chosen experts of the token's own group
            assert len({e // 4 for e in weights}) == 1


def test_norm_topk_prob_with_one_expert_keeps_the_scaling() -> None:
    """DeepSeek renormalises only when top_k > 1; a single expert keeps its score times routed_scaling_factor."""
    torch.manual_seed(1)
    block = _block(top_k=1, norm_topk_prob=True, routed_scaling_factor=2.5)
    h, modality = torch.randn(6, 16), torch.randint(0, 2, (6,))
    with torch.no_grad():
        y, chosen = _routed(block, h, modality)
        y_ref, chosen_ref = _reference_moe(block, h, modality)
    _assert_same_routing(chosen, chosen_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    scores = [w / 2.5 for weights in chosen for w in weights.values()]  # a masked softmax score, not renormalised
    assert all(0 < s < 1 for s in scores)


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_top_k_past_the_group_fills_weight_zero_slots_as_the_official_release(norm_topk_prob: bool) -> None:
    """top_k=6 with groups of 4: every in-group expert is chosen, the 2 extra slots go off-group at weight 0, and
    the output equals the official MAMoEGate's (topk over masked scores whose off-group entries are 0)."""
    torch.manual_seed(2)
    block = _block(top_k=6, norm_topk_prob=norm_topk_prob)
    h, modality = torch.randn(10, 16), torch.randint(0, 2, (10,))
    indices, weights, _ = block.router(h, modality)
    for t in range(10):
        group = set(range(4)) if modality[t] == 0 else set(range(4, 8))
        in_group = [e in group for e in indices[t].tolist()]
        assert sum(in_group) == 4 and len(set(indices[t].tolist())) == 6
        assert torch.all(weights[t][~torch.tensor(in_group)] == 0)
    with torch.no_grad():
        y, chosen = _routed(block, h, modality)
        y_ref, chosen_ref = _reference_moe(block, h, modality)
    _assert_same_routing(chosen, chosen_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    _, _, stats = block(h[None], modality[None], torch.ones(1, 10, dtype=torch.bool))
    assert stats.expert_load[0, 4:].sum() == 0 and stats.expert_load[1, :4].sum() == 0  # weight-0 slots not counted
    assert stats.expert_load.sum() == 10 * 4


def test_router_scores_stay_fp32_and_unchanged_under_bf16_autocast() -> None:
    """bf16-mixed training must not route in bf16: the gate GEMM runs with autocast off, so scores, weights and
    the chosen experts equal the fp32 ones exactly."""
    block = _block()
    h = torch.randn(64, block.router.weight.shape[1])
    modality = torch.randint(0, 2, (64,))
    indices, weights, scores = block.router(h, modality)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = block.router(h, modality)
    assert mixed[2].dtype == torch.float32
    torch.testing.assert_close(mixed[2], scores, rtol=0, atol=0)
    assert torch.equal(mixed[0], indices) and torch.equal(mixed[1], weights)

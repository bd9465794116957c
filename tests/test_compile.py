"""torch.compile of the backbone (`lightning_most.compile`): graph capture, bounded recompiles, equality with eager.

The fast tests use dynamo's `eager` / `aot_eager` backends: they capture the same graphs (and, for
`aot_eager`, trace the backward through the custom grouped-matmul op) as inductor without generating
C++ kernels, which takes minutes on the 2-core CPU. The inductor comparison is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from lightning_most.backbone import MoSTBackbone, next_token_loss
from lightning_most.compile import CompileConfig, compile_backbone
from lightning_most.config import build_config
from lightning_most.decoding.generation import generate


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _batch(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 267, (B, T), generator=g)
    modality = torch.zeros(B, T, dtype=torch.long)
    modality[:, T // 2 :] = 1  # half text, half audio ids routed to their own expert groups
    return ids, modality


def _block_inputs(config, B: int = 2, T: int = 12):
    x = torch.randn(B, T, config.hidden_size, requires_grad=True)
    modality = torch.randint(0, 2, (B, T))
    valid = torch.ones(B, T, dtype=torch.bool)
    positions = torch.arange(T)[None].expand(B, T)
    return x, modality, valid, positions


def _train_step(model: MoSTBackbone, ids: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, list]:
    model.zero_grad()
    out = model(ids, modality)
    loss = next_token_loss(out.logits, ids) + out.aux_loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("attention", ["mla", "gqa"])
def test_moe_decoder_block_captures_as_one_graph_on_the_training_path(attention: str) -> None:
    """Attention + MAMoE (router, sorted dispatch, grouped expert GEMMs, aux loss, routing stats): no graph break."""
    config = build_config("tiny", {"attention": {"kind": attention, "num_kv_heads": 2}})
    block = MoSTBackbone(config).layers[config.first_k_dense].train()
    explanation = torch._dynamo.explain(block)(*_block_inputs(config), None, None)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # fullgraph=True raises on any break; the padded-mask path too.
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    x, modality, valid, positions = _block_inputs(config)
    valid[0, -3:] = False
    mask = torch.ones(2, 1, 12, 12, dtype=torch.bool).tril()
    y, aux, stats = compiled(x, modality, valid, positions, mask, None)
    y.sum().backward()
    assert aux.item() > 0 and int(stats.tokens.sum()) == 21


def test_compiled_moe_block_forward_and_backward_equal_eager() -> None:
    """aot_eager traces forward and backward through the grouped-matmul custom op (its fake kernel and autograd)."""
    config = build_config("tiny")
    block = MoSTBackbone(config).layers[1].train()
    compiled = torch.compile(copy.deepcopy(block), backend="aot_eager", fullgraph=True)
    x, modality, valid, positions = _block_inputs(config)
    x2 = x.detach().clone().requires_grad_()
    y, aux, _ = block(x, modality, valid, positions, None, None)
    y2, aux2, _ = compiled(x2, modality, valid, positions, None, None)
    (y.square().sum() + aux).backward()
    (y2.square().sum() + aux2).backward()
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(x2.grad, x.grad)
    eager_grads = dict(block.named_parameters())
    for name, p in compiled.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name.removeprefix("_orig_mod.")].grad, msg=name)


def test_bucketed_lengths_compile_a_bounded_number_of_times() -> None:
    """Six batch shapes (batch size and length both vary): one graph per block kind (dense, MoE), not one per shape."""
    torch.manual_seed(0)
    eager = MoSTBackbone(build_config("tiny", {"num_layers": 2}))  # one dense, one MoE block
    compiled = copy.deepcopy(eager)
    compile_backbone(compiled, CompileConfig(enabled=True, backend="eager"))
    for step, (B, T) in enumerate([(2, 16), (2, 24), (3, 32), (2, 40), (4, 20), (2, 56)]):
        ids, modality = _batch(B, T, seed=step)
        loss, grads = _train_step(eager, ids, modality)
        loss_c, grads_c = _train_step(compiled, ids, modality)
        torch.testing.assert_close(loss_c, loss)
        for g, g_c in zip(grads, grads_c):
            torch.testing.assert_close(g_c, g)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert not counters["graph_break"]


def test_compiled_decoding_with_kv_cache_equals_eager_and_reuses_graphs_across_layers() -> None:
    """Greedy decoding through the cache: same ids; the graph count does not grow with the number of layers."""
    prompt = {
        "input_ids": torch.randint(0, 267, (2, 9), generator=torch.Generator().manual_seed(1)),
        "modality_ids": torch.zeros(2, 9, dtype=torch.long),
        "attention_mask": torch.ones(2, 9, dtype=torch.bool),
    }
    prompt["attention_mask"][0, :3] = False  # left padding: the prompt takes the explicit-mask path
    graphs = {}
    for num_layers in (2, 4):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        eager = MoSTBackbone(build_config("tiny", {"num_layers": num_layers})).eval()
        compiled = copy.deepcopy(eager)
        compile_backbone(compiled, CompileConfig(enabled=True, backend="eager"))
        expected = generate(eager, prompt, max_new_tokens=6)
        assert torch.equal(generate(compiled, prompt, max_new_tokens=6), expected)
        graphs[num_layers] = counters["stats"]["unique_graphs"]
    assert graphs[4] == graphs[2] <= 8, graphs


def test_stage_module_compile_switch_compiles_the_blocks() -> None:
    from lightning_most.stages import Stage1Module

    module = Stage1Module(backbone_overrides={"num_layers": 2}, compile=CompileConfig(enabled=True, backend="eager"))
    module.configure_model()
    ids, modality = _batch(2, 10)
    module.backbone(ids, modality)
    assert counters["stats"]["unique_graphs"] == 2  # the dense and the MoE block kind
    eager = Stage1Module(backbone_overrides={"num_layers": 2})
    eager.configure_model()
    eager.backbone(ids, modality)
    assert counters["stats"]["unique_graphs"] == 2  # compile defaults to off


@pytest.mark.slow
def test_inductor_compiled_training_step_equals_eager() -> None:
    """Generated C++ kernels (minutes on 2 cores): loss and every gradient within fp32 tolerance of eager."""
    torch.manual_seed(0)
    eager = MoSTBackbone(build_config("tiny"))
    compiled = copy.deepcopy(eager)
    compile_backbone(compiled, CompileConfig(enabled=True))
    for T in (16, 24, 40):
        ids, modality = _batch(2, T, seed=T)
        loss, grads = _train_step(eager, ids, modality)
        loss_c, grads_c = _train_step(compiled, ids, modality)
        torch.testing.assert_close(loss_c, loss, atol=1e-5, rtol=1e-5)
        for g, g_c in zip(grads, grads_c):
            torch.testing.assert_close(g_c, g, atol=1e-4, rtol=1e-4)


def test_compiled_blocks_compose_with_fsdp2_and_activation_checkpointing(tmp_path) -> None:
    """Compiled forwards inside FSDP2 units (1-process gloo group) and recomputed in backward: eager's gradients."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_most.parallel import apply_fsdp2

    torch.manual_seed(0)
    eager = MoSTBackbone(build_config("tiny", {"num_layers": 2}))
    compiled = copy.deepcopy(eager)
    compiled.activation_checkpointing = True
    compile_backbone(compiled, CompileConfig(enabled=True, backend="eager"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        apply_fsdp2(compiled, init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",)))
        ids, modality = _batch(2, 16)
        loss, grads = _train_step(eager, ids, modality)
        loss_c, grads_c = _train_step(compiled, ids, modality)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(loss_c, loss)
    for g, g_c in zip(grads, grads_c):
        torch.testing.assert_close(g_c.full_tensor(), g)
    # The first forward and checkpointing's recomputation in backward: two graphs per block kind, fixed.
    assert counters["stats"]["unique_graphs"] == 4 and not counters["graph_break"]

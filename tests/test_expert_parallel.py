"""Expert parallelism on 2 CPU processes (gloo) computes what one process computes.

The tiny backbone (16 routed experts, halves: text 0-7, audio 8-15) runs a global batch of 4 rows; under EP=2
rank r runs rows [2r, 2r+2) and holds experts [8r, 8r+8). Its outputs, aux loss, routing statistics and
gradients (rank losses averaged, as data parallelism does) must equal one process's on the whole batch to
1e-5 (float32 summation order: measured differences ~1e-7). Bad EP settings fail with errors naming the field.
The Lightning run (FSDP2 + EP, sharded
checkpoint, resume) is in `tests/test_distributed.py`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from lightning_most.backbone import MoSTBackbone
from lightning_most.compile import CompileConfig
from lightning_most.config import build_config
from lightning_most.expert_parallel import ExpertParallelConfig, apply_expert_parallel, moe_blocks
from lightning_most.stages import StageModule

WORLD = 2
ROWS, SEQ_LEN = 4, 16
TOL = 1e-5


def _backbone() -> MoSTBackbone:
    torch.manual_seed(0)
    return MoSTBackbone(build_config("tiny", {"num_audio_units": 16}))


def _batch(config, text_only: bool) -> dict[str, torch.Tensor]:
    """ROWS rows: text bytes then audio units (or text only), and next-token labels."""
    g = torch.Generator().manual_seed(1)
    half = SEQ_LEN // 2
    text = torch.randint(0, 256, (ROWS, SEQ_LEN if text_only else half), generator=g)
    units = config.text_vocab_size + torch.randint(0, config.num_audio_units, (ROWS, 0 if text_only else half), generator=g)
    input_ids = torch.cat([text, units], dim=1)  # (B, T)
    modality_ids = torch.cat([torch.zeros_like(text), torch.ones_like(units)], dim=1)  # (B, T)
    return {"input_ids": input_ids, "modality_ids": modality_ids, "labels": input_ids.roll(-1, dims=1)}


def _step(backbone: MoSTBackbone, batch: dict[str, torch.Tensor]) -> dict:
    """Forward and backward of the token-mean CE + aux loss; outputs, losses and routing statistics."""
    out = backbone(batch["input_ids"], batch["modality_ids"])
    ce = F.cross_entropy(out.logits.flatten(0, 1).float(), batch["labels"].flatten())
    (ce + out.aux_loss).backward()
    return {
        "logits": out.logits.detach(), "ce": ce.detach(), "aux": out.aux_loss.detach(),
        "load": torch.stack([s.expert_load for s in out.routing]),  # (L, M, E)
        "tokens": torch.stack([s.tokens for s in out.routing]),  # (L, M)
        "entropy_sum": torch.stack([s.entropy * s.tokens for s in out.routing]),  # (L, M)
    }


def _full_gradients(backbone: MoSTBackbone, world: int) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the mean of the ranks' losses: all-reduced (replicated weights) or gathered (experts)."""
    grads = {}
    for name, p in backbone.named_parameters():
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):  # this rank's experts got the gradients from every rank's tokens
            grads[name] = p.grad.full_tensor() / world
        else:
            grad = p.grad.clone()
            dist.all_reduce(grad)
            grads[name] = grad / world
    return grads


def _ep_worker(rank: int, port: int, out_dir: str, text_only: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        backbone = _backbone()
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data_parallel",))
        apply_expert_parallel(backbone, mesh, ExpertParallelConfig(size=WORLD))
        batch = {k: v[rank * ROWS // WORLD : (rank + 1) * ROWS // WORLD] for k, v in _batch(backbone.config, text_only).items()}
        result = _step(backbone, batch)
        local_expert_grads = [b.experts.gate_up_proj.grad.to_local().abs().sum() for b in moe_blocks(backbone)]
        result.update(grads=_full_gradients(backbone, WORLD), local_expert_grad_sums=torch.stack(local_expert_grads),
                      local_expert_shape=tuple(moe_blocks(backbone)[0].experts.gate_up_proj.to_local().shape))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ep(tmp_path: Path, text_only: bool) -> list[dict]:
    mp.spawn(_ep_worker, args=(_free_port(), str(tmp_path), text_only), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def _single(text_only: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    backbone = _backbone()
    batch = _batch(backbone.config, text_only)
    per_rank = []
    for r in range(WORLD):  # the ranks' losses, averaged: what data parallelism optimises
        rows = {k: v[r * ROWS // WORLD : (r + 1) * ROWS // WORLD] for k, v in batch.items()}
        backbone.zero_grad()
        per_rank.append(_step(backbone, rows))
        per_rank[-1]["grads"] = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    grads = {n: sum(r["grads"][n] for r in per_rank) / WORLD for n in per_rank[0]["grads"]}
    backbone.zero_grad()
    whole = _step(backbone, batch)  # the whole batch in one forward (routing is per token, aux per sequence)
    return whole, grads


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("text_only", [False, True], ids=["text_and_audio", "text_only"])
def test_expert_parallel_on_two_processes_matches_one_process(tmp_path: Path, text_only: bool) -> None:
    ranks = _run_ep(tmp_path, text_only)
    whole, grads = _single(text_only)
    assert ranks[0]["local_expert_shape"][0] == 8  # each rank holds half of the 16 experts
    _close(torch.cat([r["logits"] for r in ranks]), whole["logits"])
    _close(sum(r["ce"] for r in ranks) / WORLD, whole["ce"])  # equal token counts: mean of rank means
    _close(sum(r["aux"] for r in ranks) / WORLD, whole["aux"])  # mean over sequences
    assert whole["aux"] > 0
    _close(sum(r["load"] for r in ranks), whole["load"])
    _close(sum(r["tokens"] for r in ranks), whole["tokens"])
    _close(sum(r["entropy_sum"] for r in ranks), whole["entropy_sum"])
    assert set(ranks[0]["grads"]) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=TOL, atol=TOL, msg=name)
        torch.testing.assert_close(ranks[1]["grads"][name], ranks[0]["grads"][name], rtol=0, atol=0, msg=name)
    if text_only:
        # Text tokens reach only the text experts (0-7, on rank 0): rank 1's audio experts get no row, no gradient.
        assert (ranks[0]["local_expert_grad_sums"] > 0).all()
        assert (ranks[1]["local_expert_grad_sums"] == 0).all()
    else:
        assert all((r["local_expert_grad_sums"] > 0).all() for r in ranks)


@pytest.fixture
def one_process_group():
    """A gloo process group of one rank (this process), destroyed after the test."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    dist.destroy_process_group()


def test_an_expert_parallel_size_that_does_not_divide_fails_clearly(one_process_group) -> None:
    with pytest.raises(ValueError, match=r"expert_parallel.size=3 must divide moe.num_routed_experts=16"):
        apply_expert_parallel(_backbone(), one_process_group, ExpertParallelConfig(size=3))
    with pytest.raises(ValueError, match=r"expert_parallel.size=2 must divide the 1 data-parallel ranks"):
        apply_expert_parallel(_backbone(), one_process_group, ExpertParallelConfig(size=2))
    with pytest.raises(ValueError, match=r"expert_parallel.size must be >= 1"):
        ExpertParallelConfig(size=0)


def test_expert_parallelism_refuses_compile_and_a_strategy_without_a_device_mesh() -> None:
    with pytest.raises(ValueError, match="set compile.enabled false under expert parallelism"):
        StageModule(expert_parallel=ExpertParallelConfig(size=2), compile=CompileConfig(enabled=True))
    module = StageModule(expert_parallel=ExpertParallelConfig(size=2))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="needs ModelParallelStrategy.*conf/strategy/fsdp_ep.yaml"):
        trainer.fit(module, train_dataloaders=[{}])
    module.configure_model()  # outside fit (transcribe, evaluate) the backbone is built whole, every expert local
    assert all(b.expert_exchange is None for b in moe_blocks(module.backbone))

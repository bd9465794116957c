"""Expert parallelism on 2 and 4 CPU processes (gloo) computes what one process computes.

The tiny backbone (16 routed experts, halves: text 0-7, audio 8-15) runs a global batch of 4 rows; under EP=2
on 2 processes rank r runs rows [2r, 2r+2) and holds experts [8r, 8r+8); on 4 processes (FSDP2 + EP=2) each
rank runs one row and holds a quarter of them. Outputs, aux loss, routing statistics and gradients (rank
losses averaged, as data parallelism does; under FSDP2 also their norm over both meshes, as clipping takes it)
must equal one process's on the whole batch to 1e-5 (they differ only in float32 summation order).
Bad EP settings fail with errors naming the field. The Lightning run (FSDP2 + EP, sharded checkpoint,
resume) is in `tests/test_distributed.py`.
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
from lightning_most.expert_parallel import ExpertParallelConfig, apply_expert_parallel, clip_grad_norm_, moe_blocks
from lightning_most.parallel import apply_fsdp2
from lightning_most.stages import StageModule

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


def _full_gradients(backbone: MoSTBackbone, world: int, fsdp: bool) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the mean of the ranks' losses, whole on every rank.

    FSDP2 has averaged them already (its reduce-scatter) and they only need gathering; without it the replicated
    weights' gradients are averaged here, and an expert's (its rank got the gradients of every rank's tokens)
    gathered and divided by the number of ranks.
    """
    grads = {}
    for name, p in backbone.named_parameters():
        if p.grad is None:
            continue
        if fsdp:
            grads[name] = p.grad.full_tensor()
        elif isinstance(p.grad, DTensor):
            grads[name] = p.grad.full_tensor() / world
        else:
            grad = p.grad.clone()
            dist.all_reduce(grad)
            grads[name] = grad / world
    return grads


def _rows(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    return {k: v[rank * ROWS // world : (rank + 1) * ROWS // world] for k, v in batch.items()}


def _ep_worker(rank: int, world: int, ep: int, fsdp: bool, port: int, out_dir: str) -> None:
    """Run both batches (mixed, text only) under this layout in one process group; save `rank{r}_{text_only}.pt`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for text_only in (False, True):
            backbone = _backbone()
            mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
            if fsdp:
                apply_fsdp2(backbone, mesh, expert_parallel=ExpertParallelConfig(size=ep))
            else:
                apply_expert_parallel(backbone, mesh, ExpertParallelConfig(size=ep))
            result = _step(backbone, _rows(_batch(backbone.config, text_only), rank, world))
            experts = [b.experts for b in moe_blocks(backbone)]
            if fsdp:  # the norm of the averaged gradients, over both meshes (a max_norm that clips nothing)
                result["grad_norm"] = clip_grad_norm_(backbone.parameters(), max_norm=1e9)
            result.update(
                grads=_full_gradients(backbone, world, fsdp),
                local_expert_grad_sums=torch.stack([e.gate_up_proj.grad.to_local().abs().sum() for e in experts]),
                local_expert_shape=tuple(experts[0].gate_up_proj.to_local().shape),
            )
            torch.save(result, Path(out_dir) / f"rank{rank}_{text_only}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(world: int, text_only: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    backbone = _backbone()
    batch = _batch(backbone.config, text_only)
    per_rank = []
    for r in range(world):  # the ranks' losses, averaged: what data parallelism optimises
        backbone.zero_grad()
        per_rank.append(_step(backbone, _rows(batch, r, world)))
        per_rank[-1]["grads"] = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    grads = {n: sum(r["grads"][n] for r in per_rank) / world for n in per_rank[0]["grads"]}
    backbone.zero_grad()
    whole = _step(backbone, batch)  # the whole batch in one forward (routing is per token, aux per sequence)
    return whole, grads


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


LAYOUTS = {  # world size, EP size, FSDP2
    "ep2": (2, 2, False),
    "fsdp4_ep2": (4, 2, True),  # 2 EP groups of 2: each expert slice FSDP2-sharded over 2 ranks, its gradient divided by all 4
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple, dict]:
    """The layout and what each of its ranks computed, per batch kind ({text_only: [rank 0, rank 1, ...]}): one
    launch of the processes for both batches."""
    world, ep, fsdp = LAYOUTS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    mp.spawn(_ep_worker, args=(world, ep, fsdp, _free_port(), str(out)), nprocs=world, join=True)
    return (world, ep, fsdp), {t: [torch.load(out / f"rank{r}_{t}.pt") for r in range(world)] for t in (False, True)}


# text only: under fsdp4_ep2 ranks 1 and 3 (audio experts) receive no row
@pytest.mark.parametrize("text_only", [False, True], ids=["mixed", "text_only"])
def test_expert_parallelism_matches_one_process(layout_ranks: tuple[tuple, dict], text_only: bool) -> None:
    (world, ep, fsdp), ranks_of = layout_ranks
    ranks = ranks_of[text_only]
    whole, grads = _single(world, text_only)
    assert ranks[0]["local_expert_shape"][0] == 16 // ep // (world // ep if fsdp else 1)  # experts split, then sharded
    _close(torch.cat([r["logits"] for r in ranks]), whole["logits"])
    _close(sum(r["ce"] for r in ranks) / world, whole["ce"])  # equal token counts: mean of rank means
    _close(sum(r["aux"] for r in ranks) / world, whole["aux"])  # mean over sequences
    assert whole["aux"] > 0
    _close(sum(r["load"] for r in ranks), whole["load"])
    _close(sum(r["tokens"] for r in ranks), whole["tokens"])
    _close(sum(r["entropy_sum"] for r in ranks), whole["entropy_sum"])
    assert set(ranks[0]["grads"]) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=TOL, atol=TOL, msg=name)
        for other in ranks[1:]:
            torch.testing.assert_close(other["grads"][name], ranks[0]["grads"][name], rtol=0, atol=0, msg=name)
    if fsdp:
        _close(ranks[0]["grad_norm"], torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))
    if text_only:
        # Text tokens reach only the text experts (0-7, on EP rank 0): EP rank 1's audio experts get no row and
        # no gradient (under FSDP2 their zero gradient is still reduced, so the collectives stay matched).
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

"""Expert parallelism (EP): each rank holds `E / ep` routed experts of every MoE layer; tokens travel to them.

Layout (torchtitan's): the W data-parallel ranks, each training on its own batch, are viewed as a 2-D mesh
`(expert_data_parallel = W / ep, expert_parallel = ep)`. Along `expert_parallel`, the stacked expert weights
of every MoE layer are split by expert (a `DTensor` with `Shard(0)`): rank j of an EP group holds experts
`[j * E/ep, (j+1) * E/ep)`. Along `expert_data_parallel` those slices are FSDP2-sharded like any other weight
(`parallel.apply_fsdp2`). Everything else (attention, the gate, the shared experts, the embeddings) stays
FSDP2-sharded over all W ranks, as without EP.

Forward of the routed experts of one MoE layer on one rank (`ExpertParallelExchange`; P = N*k routed
(token, expert) pairs of this rank, already sorted by expert, E_l = E / ep local experts):

1. Counts: the (E,) pairs per expert go through an all-to-all as (ep, E_l) rows, so each rank learns how
   many pairs every source rank sends to each of its local experts (one host sync: the split sizes).
2. Dispatch: the (P, d) pairs go through an all-to-all; destination j gets the slice of experts it holds
   (the pairs are sorted by expert, so that slice is contiguous). Received rows are grouped by source rank,
   then by expert.
3. The received rows are re-sorted by local expert and the E_l local experts run one grouped GEMM.
4. Combine: the outputs go back by the reverse all-to-all, into the sender's sorted order; `MoEBlock` then
   weights them by the gate and adds them to their tokens.

The all-to-alls are autograd functions (`all_to_all_single_autograd`): the backward sends the gradients
of the expert outputs to the experts' ranks and the input gradients back. The gate, the aux loss and the
routing statistics are computed on the rank's own tokens before any exchange, so they are the ones one
process would compute on that rank's rows; modality groups are untouched (a token's pairs go only to
the experts its group allows, wherever they live). With `partition: halves` and ep = M, each modality's
group sits on its own ranks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from lightning_most.mamoe import MoEBlock, RoutedExperts

EXPERT_DATA_PARALLEL, EXPERT_PARALLEL = "expert_data_parallel", "expert_parallel"


@dataclass
class ExpertParallelConfig:
    """How the routed experts are spread over the data-parallel ranks (used under ModelParallelStrategy)."""

    size: int = 1
    """Ranks that share one MoE layer's routed experts, each holding `num_routed_experts / size` of them
    (DeepSeek-V2-Lite: 8 = one node, so the all-to-alls stay on NVLink); 1 = no expert parallelism. It must
    divide the number of data-parallel ranks and the number of routed experts."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"model.init_args.expert_parallel.size must be >= 1, got {self.size}")


def expert_mesh(data_parallel_mesh: DeviceMesh, ep_size: int) -> DeviceMesh:
    """The data-parallel ranks as a 2-D `(expert_data_parallel, expert_parallel)` mesh; EP groups are consecutive ranks."""
    world = data_parallel_mesh.size()
    if world % ep_size:
        raise ValueError(
            f"model.init_args.expert_parallel.size={ep_size} must divide the {world} data-parallel ranks "
            "(trainer.devices x trainer.num_nodes): choose a divisor, e.g. the GPUs of one node"
        )
    return data_parallel_mesh._unflatten(0, (world // ep_size, ep_size), (EXPERT_DATA_PARALLEL, EXPERT_PARALLEL))


class ExpertParallelExchange:
    """Runs one MoE layer's routed experts under EP: the all-to-all dispatch, the local grouped GEMM, the combine."""

    def __init__(self, ep_mesh: DeviceMesh, num_experts: int) -> None:
        self.group = ep_mesh.get_group()
        self.ep_size = ep_mesh.size()
        self.num_local_experts = num_experts // self.ep_size
        self.gathered: tuple[Tensor, Tensor] | None = None  # every expert's weights, during evaluation

    def gather(self, experts: RoutedExperts) -> None:
        """All-gather every expert's weights over the EP group; until `release`, forwards run locally (no collective)."""
        self.gathered = (experts.gate_up_proj.full_tensor(), experts.down_proj.full_tensor())

    def release(self) -> None:
        """Free the gathered weights: forwards exchange tokens again."""
        self.gathered = None

    def __call__(self, experts: RoutedExperts, x_sorted: Tensor, counts: Tensor) -> Tensor:
        """x_sorted (P, d) pairs sorted by global expert, counts (E,) pairs per expert -> (P, d) unweighted outputs."""
        if self.gathered is not None:
            return experts(x_sorted, counts, weights=self.gathered)
        ep, E_l = self.ep_size, self.num_local_experts
        counts_out = counts.reshape(ep, E_l)  # (ep, E_l) pairs this rank sends to each expert of rank j
        counts_in = funcol.all_to_all_single(counts_out.contiguous(), None, None, self.group)  # (ep, E_l) received
        counts_in = funcol.wait_tensor(counts_in)
        send_splits = counts_out.sum(dim=1).tolist()  # (ep,) host sync: all_to_all needs the split sizes
        recv_splits = counts_in.sum(dim=1).tolist()  # (ep,)
        x_recv = funcol.all_to_all_single_autograd(x_sorted, recv_splits, send_splits, self.group)  # (R, d)
        x_recv = funcol.wait_tensor(x_recv)

        # Received rows: source rank 0's rows for local experts 0..E_l-1, then source rank 1's, ...
        local_expert = torch.arange(E_l, device=counts.device).repeat(ep)  # (ep*E_l,)
        expert_of_row = local_expert.repeat_interleave(counts_in.reshape(-1))  # (R,)
        order = torch.argsort(expert_of_row, stable=True)  # (R,) rows sorted by local expert
        y_sorted = experts(x_recv[order], counts_in.sum(dim=0))  # (R, d)
        y_recv = torch.empty_like(y_sorted).index_copy(0, order, y_sorted)  # (R, d) back in received order

        y = funcol.all_to_all_single_autograd(y_recv, send_splits, recv_splits, self.group)  # (P, d)
        return funcol.wait_tensor(y)


def moe_blocks(backbone: nn.Module) -> list[MoEBlock]:
    """The MoE layers of `backbone`, in layer order."""
    return [m for m in backbone.modules() if isinstance(m, MoEBlock)]


def gather_experts_for_evaluation(backbone: nn.Module) -> None:
    """Give every rank all experts of every MoE layer until `release_gathered_experts` (a no-op without EP).

    Evaluation runs a different number of forwards on each rank (decoding), which token all-to-alls cannot:
    as FSDP2's units stay unsharded for the epoch (`parallel.unshard_for_evaluation`), so do the experts.
    Every rank must call it at the same point, after the FSDP2 units are unsharded.
    """
    for block in moe_blocks(backbone):
        if block.expert_exchange is not None:
            block.expert_exchange.gather(block.experts)


def release_gathered_experts(backbone: nn.Module) -> None:
    """Free the experts gathered by `gather_experts_for_evaluation`: MoE layers exchange tokens again."""
    for block in moe_blocks(backbone):
        if block.expert_exchange is not None:
            block.expert_exchange.release()


def apply_expert_parallel(backbone: nn.Module, data_parallel_mesh: DeviceMesh, config: ExpertParallelConfig) -> DeviceMesh:
    """Split every MoE layer's routed experts over EP groups of `config.size` ranks; returns the 2-D expert mesh.

    Call it on the freshly built backbone (every rank holding the same full weights), before FSDP2: each rank
    keeps its slice of experts as a `DTensor` `Shard(0)` over the `expert_parallel` dimension, and its MoE
    layers exchange tokens with `ExpertParallelExchange`.
    """
    blocks = moe_blocks(backbone)
    for block in blocks:
        if block.config.num_routed_experts % config.size:
            raise ValueError(
                f"model.init_args.expert_parallel.size={config.size} must divide "
                f"moe.num_routed_experts={block.config.num_routed_experts}: choose a divisor"
            )
    mesh = expert_mesh(data_parallel_mesh, config.size)
    ep_mesh = mesh[EXPERT_PARALLEL]
    rank = ep_mesh.get_local_rank()
    for block in blocks:
        E = block.config.num_routed_experts
        E_l = E // config.size
        for name in ("gate_up_proj", "down_proj"):
            full = getattr(block.experts, name)
            local = full.detach()[rank * E_l : (rank + 1) * E_l].clone()  # (E_l, ...)
            sharded = DTensor.from_local(local, ep_mesh, [Shard(0)], run_check=False)
            setattr(block.experts, name, nn.Parameter(sharded, requires_grad=full.requires_grad))
        block.expert_exchange = ExpertParallelExchange(ep_mesh, E)
    return mesh


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_` for gradients on different meshes (EP experts and FSDP2 weights); the total norm.

    torch's version stacks every parameter's norm into one tensor, which DTensors of two meshes refuse: here
    each mesh's gradients give one norm, reduced over that mesh's ranks, and those norms are combined.
    """
    by_mesh: dict[DeviceMesh | None, list[nn.Parameter]] = {}
    for p in parameters:
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    norms = []
    for params in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    for params in by_mesh.values():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total

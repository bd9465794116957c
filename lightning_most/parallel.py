"""FSDP2 for the backbone: `fully_shard` each decoder block, then the root (used from `configure_model`).

Under Lightning's `ModelParallelStrategy` (`conf/strategy/fsdp.yaml`) the stage module builds the
backbone in `configure_model` and calls `apply_fsdp2` with the strategy's device mesh. Each decoder
block is one FSDP2 unit (its parameters are all-gathered just before it runs and freed after), the
root unit holds the embeddings, the audio projector, the final norm and the heads.

Expert parallelism (`expert_parallel.py`, `conf/strategy/fsdp_ep.yaml`): with `ExpertParallelConfig.size` > 1
each MoE layer's routed experts are first split by expert over EP groups of that many ranks, then FSDP2
shards each rank's expert slice over the `expert_data_parallel` dimension only (its own unit inside the
block's), while every other weight is sharded over all ranks as above.

Evaluation (dev losses, and decoding the dev WER) runs with every unit unsharded and kept so
(`unshard_for_evaluation` / `reshard_after_evaluation`), and under EP with every expert gathered on every
rank: its forwards then need no collective, so
ranks may run different numbers of them, as decoding does (transcripts end at different steps, and
a rank may have no ASR rows in a batch). Each GPU then holds the full weights in the compute dtype
for the evaluation (DeepSeek-V2-Lite in bf16: ~31 GB).

Precision follows the trainer's `precision` flag: with `bf16-mixed` (or `bf16-true`) the
`MixedPrecisionPolicy` all-gathers parameters in bf16 and computes in bf16 while the sharded master
weights, the optimizer state and the gradient reduce-scatter stay in fp32 (torchtitan's recipe);
Lightning's autocast then only keeps its fp32 ops (softmax, norms, the loss) in fp32. Any other flag
keeps FSDP2 in fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from lightning_most.backbone import MoSTBackbone
from lightning_most.expert_parallel import (
    EXPERT_DATA_PARALLEL,
    ExpertParallelConfig,
    apply_expert_parallel,
    gather_experts_for_evaluation,
    moe_blocks,
    release_gathered_experts,
)


def fsdp2_param_dtype(precision: str | None) -> torch.dtype | None:
    """The FSDP2 compute dtype for a Lightning `precision` flag: bf16 for `bf16-*`, else None (fp32)."""
    return torch.bfloat16 if precision is not None and str(precision).startswith("bf16") else None


def apply_fsdp2(
    backbone: MoSTBackbone,
    device_mesh,
    precision: str | None = None,
    expert_parallel: ExpertParallelConfig | None = None,
) -> None:
    """Shard `backbone` over the data-parallel mesh dimension, one FSDP2 unit per decoder block.

    Args:
        backbone: the freshly built backbone (not yet moved to the GPU).
        device_mesh: the strategy's mesh; its `data_parallel` dimension is used when present.
        precision: the trainer's precision flag, which decides the `MixedPrecisionPolicy` (module docstring).
        expert_parallel: split the routed experts over EP groups first (module docstring); None or size 1: no EP.
    """
    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    policy = MixedPrecisionPolicy(param_dtype=fsdp2_param_dtype(precision), reduce_dtype=torch.float32)
    if expert_parallel is not None and expert_parallel.size > 1:
        expert_mesh = apply_expert_parallel(backbone, mesh, expert_parallel)
        for block in moe_blocks(backbone):
            fully_shard(block.experts, mesh=expert_mesh[EXPERT_DATA_PARALLEL], mp_policy=policy)
            # An expert's gradient sums the losses of all W ranks' tokens (the all-to-all backward brings them),
            # its reduce-scatter only spans W / ep ranks: divide by W, as every other weight's reduction does.
            # Summed, then divided (NCCL would pre-multiply in the reduction; gloo has no PREMUL_SUM).
            block.experts.set_gradient_divide_factor(mesh.size())
            block.experts.set_force_sum_reduction_for_comms(True)
    for block in backbone.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(backbone, mesh=mesh, mp_policy=policy)


def _fsdp_units(backbone: nn.Module) -> list[FSDPModule]:
    return [m for m in backbone.modules() if isinstance(m, FSDPModule)]


def unshard_for_evaluation(backbone: nn.Module) -> None:
    """All-gather every FSDP2 unit of `backbone` and keep it unsharded (a no-op without FSDP2); under expert
    parallelism every rank also gathers all experts.

    Every rank must call it at the same point (an epoch-start hook); afterwards forwards issue no
    collective until `reshard_after_evaluation`.
    """
    units = _fsdp_units(backbone)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    gather_experts_for_evaluation(backbone)


def reshard_after_evaluation(backbone: nn.Module) -> None:
    """Free the unsharded weights again and restore training's resharding: the decoder blocks after their
    forward, the root not (as `fully_shard` sets a root)."""
    release_gathered_experts(backbone)
    for unit in _fsdp_units(backbone):
        unit.reshard()
        unit.set_reshard_after_forward(unit is not backbone, recurse=False)

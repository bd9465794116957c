"""`torch.compile` for the backbone: each decoder block is compiled on its own, as torchtitan does.

Why per block and not the whole model:
- Every decoder block runs the same code, so one compiled graph serves all layers of a kind (dense or
  MoE): compile time is that of one or two blocks, not of the whole stack. Attention caches are
  per-layer objects (`attention.LayerCache`), so no layer index specialises a graph.
- The parts outside the blocks have data-dependent shapes by design: audio frames are scattered into
  the sequence at `feature_mask` (its count checked on the host), the encoder splits them per segment,
  and `causal_mask_or_none` decides on the host whether SDPA may use its fused causal kernel. They run
  eagerly; the blocks, where the FLOPs are, are compiled with `fullgraph=True` (no graph break allowed).
- It composes with what is applied per block from outside: FSDP2 units (`parallel.apply_fsdp2`) and
  activation checkpointing. Only `forward` is compiled, so module hooks (FSDP2's all-gathers) run eagerly
  around it and parameter names (state-dict keys, checkpoints) do not change.

Shapes: bucketed batches change both the batch size and the length from step to step, so the blocks are
compiled with symbolic sizes from the start (`dynamic=True`): one graph per block kind serves every
batch shape (sizes 0 and 1 are still specialised, e.g. the one-position steps of cached decoding).
dynamo's default (`dynamic=None`) would compile a static graph first and then recompile once for each
dimension that turns out to vary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_most.backbone import MoSTBackbone


@dataclass
class CompileConfig:
    """`torch.compile` settings of the backbone (stage modules' `compile` argument)."""

    enabled: bool = False
    """Compile each decoder block (training, evaluation and cached decoding)."""
    backend: str = "inductor"
    """torch.compile backend: inductor (generates kernels), or aot_eager / eager (capture only, for debugging)."""
    dynamic: bool | None = True
    """True: symbolic batch and sequence sizes from the start; None: static first, symbolic after a size
    changes (fixed-shape benchmarks); False: one graph per shape (recompiles for every new length)."""
    recompile_limit: int = 16
    """Graphs dynamo keeps per block code before falling back to eager: dense and MoE blocks, training and
    evaluation, prefill and cached steps each need their own (typically 8-12 in a run that trains and decodes)."""


def compile_backbone(backbone: MoSTBackbone, config: CompileConfig) -> None:
    """Compile every decoder block's forward of `backbone` in place (nothing when `config.enabled` is False)."""
    if not config.enabled:
        return
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, config.recompile_limit)
    for block in backbone.layers:
        block.forward = torch.compile(block.forward, backend=config.backend, fullgraph=True, dynamic=config.dynamic)

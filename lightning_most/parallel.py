"""FSDP2 for the backbone: `fully_shard` each decoder block, then the root (used from `configure_model`)."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lightning_most.backbone import MoSTBackbone


def apply_fsdp2(backbone: MoSTBackbone, device_mesh, param_dtype: torch.dtype | None = None) -> None:
    """Shard `backbone` over the data-parallel mesh dimension; bf16 compute on GPUs with bf16 support."""
    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    if param_dtype is None and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        param_dtype = torch.bfloat16
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in backbone.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(backbone, mesh=mesh, mp_policy=policy)

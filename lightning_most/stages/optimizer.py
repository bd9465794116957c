"""The optimiser of every stage: AdamW (decay on matrices only) with linear warmup then cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * lr` (YAML: `model.init_args.optimizer`)."""

    lr: float = 3e-4
    """Peak learning rate, reached at the end of the warmup."""
    weight_decay: float = 0.1
    """Applied to matrices (not to norms, biases or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates."""
    warmup_steps: int = 100
    """Steps of the linear warmup from lr / warmup_steps to lr."""
    decay_steps: int | None = None
    """Steps of the cosine; None = the trainer's max_steps (constant after warmup if that is -1)."""
    min_lr_ratio: float = 0.1
    """The cosine ends at this fraction of lr."""


def warmup_cosine(config: OptimizerConfig, total_steps: int | None) -> Callable[[int], float]:
    """The lr multiplier of each step: linear warmup, then cosine to `min_lr_ratio` over `total_steps` (None: constant)."""

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if total_steps is None:
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def configure_adamw(model: torch.nn.Module, config: OptimizerConfig, max_steps: int | None) -> dict:
    """Lightning's `configure_optimizers` answer for `model`: AdamW in two groups (decay on matrices that are not
    embeddings) and the per-step warmup + cosine schedule over `config.decay_steps` or else `max_steps`."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=tuple(config.betas),
    )
    total = config.decay_steps or (max_steps if max_steps and max_steps > 0 else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fill_missing_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter that has had no gradient yet the zero state AdamW would create at its first step.

    A sharded (FSDP2) checkpoint is loaded against a state for every parameter, so one saved while some
    parameter never had a gradient (the audio projector before the first ASR batch, the decoder during
    `ctc.warmup_steps`) could not be resumed. The zero state is exactly what AdamW starts from, and
    parameters without a gradient are still skipped by its step, so training is unchanged.
    """
    if not isinstance(optimizer, torch.optim.AdamW):
        return
    if len(optimizer.state) >= sum(len(g["params"]) for g in optimizer.param_groups):
        return  # every parameter has its state (every step after the first few): nothing to walk
    for group in optimizer.param_groups:
        on_device = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            if optimizer.state.get(p):
                continue
            step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state = {
                "step": torch.zeros((), dtype=step_dtype, device=p.device) if on_device else torch.tensor(0.0, dtype=step_dtype),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            optimizer.state[p] = state

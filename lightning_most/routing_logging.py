"""Routing views for TensorBoard: per-layer expert-load heatmaps, load histograms, routing entropy."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_most.mamoe import RoutingStats

MODALITY_NAMES = ("text", "audio")


def modality_name(m: int) -> str:
    """Readable name of modality id m."""
    return MODALITY_NAMES[m] if m < len(MODALITY_NAMES) else f"modality{m}"


def load_heatmap(stats: list[RoutingStats]):
    """A matplotlib figure: one (modality x expert) panel per MoE layer, each row the share of its tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(stats), 1, figsize=(8, 0.9 + 0.6 * len(stats)), squeeze=False)
    for layer, (ax, s) in enumerate(zip(axes[:, 0], stats)):
        load = s.expert_load.float().cpu()
        share = load / load.sum(dim=1, keepdim=True).clamp(min=1)  # (M, E)
        ax.imshow(share.numpy(), aspect="auto", cmap="viridis", vmin=0)
        ax.set_yticks(range(share.shape[0]), [modality_name(m) for m in range(share.shape[0])])
        ax.set_ylabel(f"L{layer}", rotation=0, labelpad=12)
        ax.set_xticks([])
    axes[-1, 0].set_xlabel("routed expert")
    fig.tight_layout()
    return fig


def log_routing(module: pl.LightningModule, stats: list[RoutingStats], step: int) -> None:
    """Entropy scalars through `module.log`; heatmap and load histograms to TensorBoard loggers."""
    for layer, s in enumerate(stats):
        for m in range(s.entropy.shape[0]):
            if s.tokens[m] > 0:
                module.log(f"routing/entropy_L{layer}_{modality_name(m)}", s.entropy[m], batch_size=1)
    for logger in module.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        writer = logger.experiment
        writer.add_figure("routing/expert_load", load_heatmap(stats), global_step=step)
        for layer, s in enumerate(stats):
            for m in range(s.expert_load.shape[0]):
                if s.tokens[m] > 0:
                    # One sample per assignment, valued by its expert index: the histogram is the load.
                    experts = torch.arange(s.expert_load.shape[1]).repeat_interleave(s.expert_load[m].long().cpu())
                    writer.add_histogram(f"routing/load_L{layer}_{modality_name(m)}", experts, global_step=step)

"""`ExportHuggingFace`: when `fit` ends, save the trained backbone as a Hugging Face folder (`export.py`).

conf/pretrain_text.yaml uses it, so the text LMs pretrained here reach stage 1 through the same
`convert` path as a downloaded checkpoint (Llama layout for the dense model, DeepSeek-V2 for the MoE).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from lightning_most.export import export_backbone


class ExportHuggingFace(pl.Callback):
    """Write the backbone in the Hugging Face layout to `out_dir` (default: `<trainer.default_root_dir>/hf`)."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            out_dir = self.out_dir or Path(trainer.default_root_dir) / "hf"
            out = export_backbone(pl_module.config, pl_module.backbone.state_dict(), out_dir)
            print(f"Hugging Face checkpoint: {out} (convert it with `python -m lightning_most convert --src {out}`)")

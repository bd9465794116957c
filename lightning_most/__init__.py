"""lightning_most: MoST (Modality-Aware MoE speech+text LMs) on PyTorch Lightning."""

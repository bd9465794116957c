"""A tiny random HuBERT saved as a local transformers folder, framed like the real one (320 samples = 20 ms).

A test module uses it with `pytest_plugins = ["tests.fixtures_hubert"]`; `save_tiny_hubert` writes one
anywhere. Nothing is downloaded: the weights are random (seeded).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HIDDEN_SIZE, NUM_LAYERS = 32, 12  # 12 layers: layer 11, the units' layer of SpiritLM and conf/stage1_most.yaml, exists


def save_tiny_hubert(path: Path, seed: int = 0) -> Path:
    """Write a random 12-layer, 32-wide HuBERT with a 320-sample stride (50 Hz, like HuBERT-base/large) to `path`."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 8),
        conv_stride=(5, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    HubertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of one tiny random HuBERT for the whole test session."""
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert") / "tiny-hubert")

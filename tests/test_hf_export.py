"""The pretraining callback writes a Hugging Face folder that `convert` reads back to the trained text logits."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import build_config
from lightning_most.convert import config_from_hf, hf_state_dict
from lightning_most.hf_export import ExportHuggingFace

DENSE = {"num_layers": 2, "first_k_dense": 2, "num_audio_units": 8, "moe": {"variant": "dense"},
         "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}}
MOE = {"num_layers": 2, "num_audio_units": 8, "moe": {"variant": "vanilla", "num_routed_experts": 4, "top_k": 2}}


@pytest.mark.parametrize("overrides", [DENSE, MOE], ids=["llama", "deepseek_v2"])
def test_callback_writes_what_convert_reads(tmp_path: Path, overrides: dict) -> None:
    torch.manual_seed(0)
    config = build_config("tiny", overrides)
    backbone = MoSTBackbone(config).eval()
    module = types.SimpleNamespace(config=config, backbone=backbone)
    trainer = types.SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
    ExportHuggingFace().on_fit_end(trainer, module)
    back_config = config_from_hf(tmp_path / "hf", 8, config.audio_feature_dim, "vanilla", text_vocab_size=267)
    back = MoSTBackbone(back_config).eval()
    back.load_state_dict(hf_state_dict(tmp_path / "hf", back_config), strict=False)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(ids, torch.zeros_like(ids)).logits[..., :267],
                                   backbone(ids, torch.zeros_like(ids)).logits[..., :267], atol=1e-5, rtol=1e-5)

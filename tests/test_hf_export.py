"""Export -> convert round trip: a backbone saved in the Hugging Face layout converts back to the same text logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import build_config
from lightning_most.convert import config_from_hf, hf_state_dict
from lightning_most.hf_export import export_hf

transformers = pytest.importorskip("transformers")

LLAMA_LIKE = {"num_layers": 2, "first_k_dense": 2, "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}}
DEEPSEEK_LIKE = {"num_layers": 3, "first_k_dense": 1, "moe": {"variant": "vanilla", "num_routed_experts": 4, "top_k": 2}}


def _random_backbone(overrides: dict) -> MoSTBackbone:
    torch.manual_seed(0)
    model = MoSTBackbone(build_config("tiny", {"num_audio_units": 8, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 1.0 if "router" in name else 0.15) if p.ndim > 1 else p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("overrides", [LLAMA_LIKE, DEEPSEEK_LIKE], ids=["llama", "deepseek_v2"])
def test_exported_checkpoint_converts_back_to_the_same_logits(tmp_path: Path, overrides: dict) -> None:
    model = _random_backbone(overrides)
    out = export_hf(model, tmp_path / "hf")
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        ours = model(ids, torch.zeros_like(ids)).logits[..., :267]
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(hf_model(ids).logits, ours, atol=1e-4, rtol=1e-4)
    config = config_from_hf(out, num_audio_units=8, audio_feature_dim=160, moe_variant="vanilla", text_vocab_size=267)
    back = MoSTBackbone(config)
    back.load_state_dict(hf_state_dict(out, config), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids, torch.zeros_like(ids)).logits[..., :267], ours, atol=1e-5, rtol=1e-5)


def test_masked_variants_and_gqa_moe_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Hugging Face layout"):
        export_hf(MoSTBackbone(build_config("tiny", {"num_layers": 2})), tmp_path)
    gqa_moe = {"num_layers": 2, "attention": {"kind": "gqa"}, "moe": {"variant": "vanilla"}}
    with pytest.raises(ValueError, match="grouped-query attention with MoE"):
        export_hf(MoSTBackbone(build_config("tiny", gqa_moe)), tmp_path)

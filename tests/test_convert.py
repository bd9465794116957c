"""Hugging Face checkpoints -> backbone: logits equal transformers' on tiny random DeepSeek-V2 and Llama models.

Each model is built offline with transformers, given random weights of O(1) logits (router weights large
enough that top-k choices are not near ties), saved with `save_pretrained` to tmp_path, converted, and
loaded into a `MoSTBackbone` with the vanilla MoE variant (transformers routes without a modality mask).
Text-only logits (modality ids 0) must then match transformers' to 1e-4: this checks attention (MLA and
GQA, the RoPE convention and its yarn / llama3 scaling, the softmax scale), the router (softmax, greedy
top-k, routed_scaling_factor), the experts' layout, the norms and the heads.
"""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import PRESETS, build_config
from lightning_most.convert import (
    CheckpointError,
    config_from_hf,
    convert_hf_checkpoint,
    main,
    preset_overrides,
)
from lightning_most.stages.base import StageModule

transformers = pytest.importorskip("transformers")

VOCAB, UNITS, FEATURES = 300, 8, 16
TOLERANCE = 1e-4  # fp32 on CPU; measured max differences are ~1e-5 (DeepSeek-V2) and 0 (Llama)

DEEPSEEK = {
    "hidden_size": 64, "num_hidden_layers": 2, "first_k_dense_replace": 1, "n_routed_experts": 4,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "intermediate_size": 64,
    "kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "num_attention_heads": 4, "vocab_size": VOCAB, "max_position_embeddings": 128,
}
# YaRN as DeepSeek-V2-Lite uses it, with a short original context so that 40 positions exercise it.
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
        "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "intermediate_size": 128, "vocab_size": VOCAB, "tie_word_embeddings": True}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def _randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif ".mlp.gate." in name:  # router: peaked scores, so top-k is not decided by rounding
                p.normal_(0, 1.0)
            else:
                p.normal_(0, 0.15)


def _save_deepseek(path: Path, **overrides) -> torch.nn.Module:
    config = transformers.DeepseekV2Config(**{**DEEPSEEK, **overrides})
    model = transformers.DeepseekV2ForCausalLM(config)
    _randomize(model)
    model.eval().save_pretrained(path)
    return model


def _save_llama(path: Path, **overrides) -> torch.nn.Module:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **overrides}))
    _randomize(model)
    model.eval().save_pretrained(path)
    return model


def _converted(src: Path, out: Path, variant: str = "vanilla") -> MoSTBackbone:
    file = convert_hf_checkpoint(src, out, num_audio_units=UNITS, audio_feature_dim=FEATURES, moe_variant=variant)
    backbone = MoSTBackbone(config_from_hf(src, UNITS, FEATURES, variant))
    backbone.load_state_dict(torch.load(file, weights_only=True), strict=True)
    return backbone.eval()


def _max_logit_difference(hf_model: torch.nn.Module, backbone: MoSTBackbone, T: int = 40) -> float:
    ids = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        reference = hf_model(ids).logits  # (B, T, VOCAB)
        ours = backbone(ids, torch.zeros_like(ids)).logits  # (B, T, text_vocab_size + UNITS)
    assert ours.shape == (2, T, backbone.config.text_vocab_size + UNITS)
    return (reference - ours[..., :VOCAB]).abs().max().item()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="lite-like"),  # q_proj, plain RoPE
        pytest.param({"q_lora_rank": 12, "routed_scaling_factor": 2.0, "rope_parameters": YARN}, id="q-lora-yarn"),
        pytest.param({"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 2}, id="all-groups"),
        # The q_a / kv_a latent norms keep eps 1e-6 whatever rms_norm_eps is (a large eps makes a wrong one show).
        pytest.param({"q_lora_rank": 12, "rms_norm_eps": 0.5}, id="latent-norm-eps"),
    ],
)
def test_deepseek_v2_logits_match_transformers(tmp_path: Path, overrides: dict) -> None:
    hf_model = _save_deepseek(tmp_path / "hf", **overrides)
    backbone = _converted(tmp_path / "hf", tmp_path / "backbone.pt")
    assert _max_logit_difference(hf_model, backbone) < TOLERANCE


def test_norm_topk_prob_converts_to_deepseeks_renormalised_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """norm_topk_prob=True maps to `moe.norm_topk_prob`. transformers 5.24's DeepseekV2TopkRouter ignores the flag,
    so the reference is that router with DeepSeek-V2's renormalisation added (weights / (sum + 1e-20); the routed
    scaling factor cancels out of the ratio)."""
    router = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter
    plain_forward = router.forward

    def renormalised_forward(self, hidden_states):
        logits, weights, indices = plain_forward(self, hidden_states)
        return logits, weights / (weights.sum(dim=-1, keepdim=True) + 1e-20), indices

    monkeypatch.setattr(router, "forward", renormalised_forward)
    hf_model = _save_deepseek(tmp_path / "hf", norm_topk_prob=True, routed_scaling_factor=2.0, num_experts_per_tok=3)
    backbone = _converted(tmp_path / "hf", tmp_path / "backbone.pt")
    assert backbone.config.moe.norm_topk_prob
    assert _max_logit_difference(hf_model, backbone) < TOLERANCE
    monkeypatch.setattr(router, "forward", plain_forward)  # the unnormalised gate gives other logits
    assert _max_logit_difference(hf_model, backbone) > 100 * TOLERANCE


@pytest.mark.parametrize("rope", [None, LLAMA3], ids=["plain-rope", "llama3-rope"])
def test_llama_logits_match_transformers(tmp_path: Path, rope: dict | None) -> None:
    hf_model = _save_llama(tmp_path / "hf", **({"rope_parameters": rope} if rope else {}))
    backbone = _converted(tmp_path / "hf", tmp_path / "backbone.pt")
    assert backbone.text_head is None  # tied: the text head reads the embedding's text rows
    assert _max_logit_difference(hf_model, backbone) < TOLERANCE


def test_printed_preset_and_overrides_rebuild_a_plain_rope_llama(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """What `convert` prints rebuilds the model: the nearest preset (llama-3.2-3b) scales RoPE (llama3), the
    checkpoint does not, so the overrides must turn the scaling off (a null override keeps the preset's: logits
    were then ~0.13 off)."""
    hf_model = _save_llama(tmp_path / "hf")  # tied embeddings, plain RoPE
    out = main(["--src", str(tmp_path / "hf"), "--out", str(tmp_path / "llama.pt"),
                "--num-audio-units", str(UNITS), "--audio-feature-dim", str(FEATURES)])
    printed = capsys.readouterr().out
    preset = re.search(r"--model\.init_args\.backbone (\S+)", printed).group(1)
    overrides = json.loads(re.search(r"backbone_overrides: (\{.*\})", printed).group(1))
    assert preset == "llama-3.2-3b" and PRESETS[preset].attention.rope_scaling is not None
    assert overrides["attention"]["rope_scaling"] == {"rope_type": "default"}
    config = build_config(preset, overrides)
    assert config.attention.rope_scaling is None
    backbone = MoSTBackbone(config)
    backbone.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert _max_logit_difference(hf_model, backbone.eval()) < TOLERANCE


def test_expert_layouts_and_shards_convert_identically(tmp_path: Path) -> None:
    """Per-expert files (save_pretrained, the released files), transformers' fused layout and shards agree."""
    hf_model = _save_deepseek(tmp_path / "per_expert")
    names = load_file(tmp_path / "per_expert" / "model.safetensors")
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in names  # the on-disk layout is what we tested above
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_text((tmp_path / "per_expert" / "config.json").read_text())
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    assert state["model.layers.1.mlp.experts.gate_up_proj"].shape == (4, 64, 64)  # (E, 2h, d)
    save_file(state, fused / "model.safetensors")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()

    reference = convert_hf_checkpoint(tmp_path / "per_expert", tmp_path / "a.pt", UNITS, FEATURES)
    expected = torch.load(reference, weights_only=True)
    for src in (fused, tmp_path / "sharded"):
        got = torch.load(convert_hf_checkpoint(src, tmp_path / f"{src.name}.pt", UNITS, FEATURES), weights_only=True)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_placement_of_text_rows_and_fresh_audio_parts(tmp_path: Path) -> None:
    hf_model = _save_deepseek(tmp_path / "hf")
    a = torch.load(convert_hf_checkpoint(tmp_path / "hf", tmp_path / "a.pt", UNITS, FEATURES, text_vocab_size=311),
                   weights_only=True)
    embed = hf_model.model.embed_tokens.weight
    assert a["embed_tokens.weight"].shape == (311 + UNITS, 64)
    assert torch.equal(a["embed_tokens.weight"][:VOCAB], embed)
    assert torch.equal(a["text_head.weight"][:VOCAB], hf_model.lm_head.weight)
    # Experts: row-vector layout, gate first then up.
    experts = hf_model.model.layers[1].mlp.experts
    assert torch.equal(a["layers.1.mlp.experts.gate_up_proj"], experts.gate_up_proj.transpose(1, 2))
    assert torch.equal(a["layers.1.mlp.experts.down_proj"], experts.down_proj.transpose(1, 2))
    assert torch.equal(a["layers.1.mlp.router.weight"], hf_model.model.layers[1].mlp.gate.weight)
    # Rows past the checkpoint (specials, units), audio head and projector: fresh, seeded, not zeros.
    fresh = a["embed_tokens.weight"][VOCAB:]
    assert 0.01 < fresh.std() < 0.04 and a["audio_head.weight"].shape == (UNITS, 64)
    b = torch.load(convert_hf_checkpoint(tmp_path / "hf", tmp_path / "b.pt", UNITS, FEATURES, text_vocab_size=311,
                                         seed=1), weights_only=True)
    assert not torch.equal(b["audio_head.weight"], a["audio_head.weight"])
    assert torch.equal(b["layers.1.mlp.experts.down_proj"], a["layers.1.mlp.experts.down_proj"])


def test_init_from_loads_the_converted_file(tmp_path: Path) -> None:
    """The stage's `init_from` loader accepts the file for the default MAMoE variant."""
    _save_deepseek(tmp_path / "hf")
    file = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "backbone.pt", UNITS, FEATURES)
    backbone = MoSTBackbone(config_from_hf(tmp_path / "hf", UNITS, FEATURES))
    stage = types.SimpleNamespace(backbone=backbone, hparams=types.SimpleNamespace(backbone="converted"))
    StageModule._load_backbone_weights(stage, str(file))
    assert torch.equal(backbone.layers[1].mlp.experts.down_proj, torch.load(file)["layers.1.mlp.experts.down_proj"])


def test_noshared_variant_drops_shared_experts(tmp_path: Path) -> None:
    _save_deepseek(tmp_path / "hf")
    backbone = _converted(tmp_path / "hf", tmp_path / "backbone.pt", variant="noshared")
    assert backbone.layers[1].mlp.shared_experts is None


# The released config.json files (DeepSeek-V2-Lite in the legacy rope_scaling form, Llama-3.2-3B).
DEEPSEEK_V2_LITE_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "attention_bias": False,
    "aux_loss_alpha": 0.001, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
    "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
    "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "seq_aux": True, "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400,
}
LLAMA_3_2_3B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": 24, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 128256,
}


@pytest.mark.parametrize(
    "hf_config, preset",
    [(DEEPSEEK_V2_LITE_CONFIG, "deepseek-v2-lite"), (LLAMA_3_2_3B_CONFIG, "llama-3.2-3b")],
    ids=["deepseek-v2-lite", "llama-3.2-3b"],
)
def test_released_configs_equal_the_presets(tmp_path: Path, hf_config: dict, preset: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    config = config_from_hf(tmp_path, num_audio_units=500, audio_feature_dim=1024)
    assert config == PRESETS[preset]
    assert preset_overrides(config) == (preset, {})


def _edit_config(folder: Path, **changes) -> None:
    file = folder / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1}, "topk_method='group_limited_greedy'"),
        ({"topk_method": "noaux_tc"}, "topk_method='noaux_tc'"),
        ({"scoring_func": "sigmoid"}, "scoring_func='sigmoid'"),
        ({"moe_layer_freq": 2}, "moe_layer_freq=2"),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "rope type 'dynamic'"),
        ({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}, "MixtralForCausalLM"),
    ],
)
def test_unsupported_config_fields_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    _save_deepseek(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=f"config.json.*{message}"):
        convert_hf_checkpoint(tmp_path, tmp_path / "out.pt", UNITS, FEATURES)


def test_bad_folders_and_tensors_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        config_from_hf(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="has no config.json"):
        config_from_hf(tmp_path)
    src = tmp_path / "hf"
    _save_deepseek(src)
    weights = load_file(src / "model.safetensors")
    with pytest.raises(CheckpointError, match="vocab_size=300 does not fit text_vocab_size=200"):
        convert_hf_checkpoint(src, tmp_path / "out.pt", UNITS, FEATURES, text_vocab_size=200)

    missing = dict(weights)
    del missing["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(missing, src / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight is missing"):
        convert_hf_checkpoint(src, tmp_path / "out.pt", UNITS, FEATURES)

    reshaped = {**weights, "model.layers.0.self_attn.kv_b_proj.weight": torch.zeros(128, 8)}
    save_file(reshaped, src / "model.safetensors")
    wrong_shape = r"kv_b_proj\.weight in model\.safetensors has shape \(128, 8\), config.json implies \(128, 16\)"
    with pytest.raises(CheckpointError, match=wrong_shape):
        convert_hf_checkpoint(src, tmp_path / "out.pt", UNITS, FEATURES)

    save_file({**weights, "model.layers.2.input_layernorm.weight": torch.ones(64)}, src / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 tensors have no place.*layers\.2\.input_layernorm"):
        convert_hf_checkpoint(src, tmp_path / "out.pt", UNITS, FEATURES)

    (src / "model.safetensors").unlink()
    torch.save(weights, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors.*pytorch_model\.bin.*not read"):
        convert_hf_checkpoint(src, tmp_path / "out.pt", UNITS, FEATURES)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _save_llama(tmp_path / "hf")
    out = main(["--src", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt" / "llama.pt"),
                "--num-audio-units", str(UNITS), "--audio-feature-dim", str(FEATURES), "--dtype", "bfloat16"])
    state = torch.load(out, weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    printed = capsys.readouterr().out
    assert "--model.init_args.backbone llama-3.2-3b" in printed and '"num_layers": 2' in printed

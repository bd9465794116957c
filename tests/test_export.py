"""export: a backbone -> a Hugging Face folder that `convert` reads back to the same tensors, and that transformers'
DeepseekV2ForCausalLM / LlamaForCausalLM load (offline) with the backbone's text logits for the vanilla and dense
variants. Backbones are tiny and random (router weights large enough that top-k choices are not near ties)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import ModelConfig, build_config
from lightning_most.convert import CheckpointError, config_from_hf, convert_hf_checkpoint
from lightning_most.export import ExportError, export_backbone, hf_architecture, transformers_caveats
from lightning_most.main import main
from lightning_most.stages.hparams import stage_model_config

transformers = pytest.importorskip("transformers")
pytest_plugins = ["tests.fixtures_checkpoint"]

UNITS, FEATURES = 8, 16
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 0.707}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
GQA = {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16}
BACKBONES = {
    # MAMoE with explicit groups, low-rank queries, YaRN, and every audio part (encoder, CTC head).
    "mamoe": {"num_layers": 3, "attention": {"q_lora_rank": 12, "rope_scaling": YARN},
              "moe": {"expert_groups": [list(range(0, 16, 2)), list(range(1, 16, 2))], "top_k": 3},
              "audio_encoder": {"num_conv_layers": 1, "num_layers": 1, "ctc_head": True}},
    "noshared-layer-groups": {"num_layers": 3, "moe": {"variant": "noshared", "num_shared_experts": 2,
                              "layer_expert_groups": [[[0, 1, 2, 3], list(range(4, 16))], [list(range(12)), [12, 13, 14, 15]]]}},
    "vanilla": {"num_layers": 3, "attention": {"q_lora_rank": 12, "rope_scaling": YARN},
                "moe": {"variant": "vanilla", "routed_scaling_factor": 1.5}},
    "dense": {"num_layers": 3, "moe": {"variant": "dense"}},  # layer 0: 256 units, layers 1-2: 192 (padded)
    "llama": {"num_layers": 2, "first_k_dense": 2, "tie_text_embeddings": True, "rms_norm_eps": 1e-5,
              "attention": {**GQA, "rope_theta": 500000.0, "rope_scaling": LLAMA3}, "moe": {"variant": "dense"}},
}


def _random_backbone(name: str, seed: int = 0) -> MoSTBackbone:
    torch.manual_seed(seed)
    model = MoSTBackbone(build_config("tiny", {"num_audio_units": UNITS, "audio_feature_dim": FEATURES, **BACKBONES[name]}))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 1.0 if key.endswith("router.weight") else 0.15)
    return model.eval()


def _assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_export_then_convert_gives_the_same_tensors_and_config(tmp_path: Path, name: str) -> None:
    model = _random_backbone(name)
    folder = export_backbone(model.config, model.state_dict(), tmp_path / "hf")
    assert config_from_hf(folder) == model.config  # most_config: variant, groups, audio settings
    back = torch.load(convert_hf_checkpoint(folder, tmp_path / "back.pt"), weights_only=True)
    _assert_same_state(back, model.state_dict())  # audio parts included, not freshly initialised


def test_convert_gives_an_export_the_audio_shapes_and_variant_asked_for(tmp_path: Path) -> None:
    """A text LM pretrained here (conf/pretrain_text.yaml) is exported with the preset's audio shapes; converting it
    for a corpus with other shapes, as NoShared, keeps every text tensor and starts the reshaped audio parts afresh."""
    model = _random_backbone("vanilla")
    folder = export_backbone(model.config, model.state_dict(), tmp_path / "hf")
    with pytest.warns(UserWarning, match=r"audio parts .* start afresh: most\.embed_audio_units\.weight \(8, 128\)"):
        out = convert_hf_checkpoint(folder, tmp_path / "x.pt", num_audio_units=5, audio_feature_dim=24,
                                    moe_variant="noshared")
    config = config_from_hf(folder, num_audio_units=5, audio_feature_dim=24, moe_variant="noshared")
    assert (config.num_audio_units, config.audio_feature_dim, config.moe.variant) == (5, 24, "noshared")
    state = torch.load(out, weights_only=True)
    MoSTBackbone(config).load_state_dict(state)  # strict: every tensor has the asked-for shape
    source = model.state_dict()
    assert not any("shared_experts" in key for key in state)
    text_rows = model.config.text_vocab_size
    torch.testing.assert_close(state["embed_tokens.weight"][:text_rows], source["embed_tokens.weight"][:text_rows])
    for key, tensor in state.items():
        if key.startswith("layers.") or key in ("norm.weight", "text_head.weight"):
            torch.testing.assert_close(tensor, source[key], rtol=0, atol=0, msg=key)
    assert state["audio_projector.1.weight"].shape == (model.config.hidden_size, 24)
    assert state["audio_head.weight"].shape[0] == 5
    unchanged = config_from_hf(folder)  # no options: the export's own config, as before
    assert unchanged == model.config


def test_audio_parts_are_stored_under_clear_names(tmp_path: Path) -> None:
    model = _random_backbone("mamoe")
    tensors = load_file(export_backbone(model.config, model.state_dict(), tmp_path) / "model.safetensors")
    audio = sorted({k.split(".")[1] for k in tensors if k.startswith("most.")})
    assert audio == ["audio_encoder", "audio_head", "audio_projector", "ctc_head", "embed_audio_units"]
    V = model.config.text_vocab_size
    assert torch.equal(tensors["most.embed_audio_units.weight"], model.embed_tokens.weight[V:])
    assert torch.equal(tensors["model.embed_tokens.weight"], model.embed_tokens.weight[:V])
    assert "model.layers.1.mlp.experts.15.down_proj.weight" in tensors  # per expert, as DeepSeek-V2's files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV2ForCausalLM"]
    assert config["most_config"]["moe"]["expert_groups"][1] == list(range(1, 16, 2))


@pytest.mark.parametrize("name, hf_class", [("vanilla", "DeepseekV2ForCausalLM"), ("dense", "DeepseekV2ForCausalLM"),
                                            ("llama", "LlamaForCausalLM")])
def test_transformers_loads_vanilla_and_dense_exports_with_equal_text_logits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, hf_class: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _random_backbone(name)
    assert transformers_caveats(model.config) == []
    folder = export_backbone(model.config, model.state_dict(), tmp_path / "hf")
    hf_model = getattr(transformers, hf_class).from_pretrained(folder).eval()
    ids = torch.randint(0, model.config.text_vocab_size, (2, 40))  # 40 > 16 positions: the RoPE scaling matters
    with torch.no_grad():
        reference = hf_model(ids).logits  # (B, T, text_vocab_size)
        ours = model(ids, torch.zeros_like(ids)).logits[..., : model.config.text_vocab_size]
    scale = reference.abs().max()
    assert scale > 1  # logits of O(1) (std ~1.7): the comparison is not of two near-zero tensors
    # fp32 on CPU: ~4e-6 of the scale measured (DeepSeek-V2: operations in another order), 0 for Llama.
    assert (reference - ours).abs().max() <= 1e-5 * scale


def test_caveats_name_what_transformers_cannot_run() -> None:
    assert "modality mask" in transformers_caveats(_random_backbone("mamoe").config)[0]
    config = build_config("tiny", {"moe": {"variant": "vanilla", "norm_topk_prob": True}})
    assert "norm_topk_prob" in transformers_caveats(config)[0]
    with pytest.raises(ExportError, match="gqa' with MoE layers has no transformers layout"):
        hf_architecture(build_config("tiny", {"attention": GQA}))


def test_convert_refuses_a_dense_export_whose_padding_was_changed(tmp_path: Path) -> None:
    model = _random_backbone("dense")
    folder = export_backbone(model.config, model.state_dict(), tmp_path / "hf")
    tensors = load_file(folder / "model.safetensors")
    assert tensors["model.layers.1.mlp.gate_proj.weight"].shape[0] == 256  # 192 units padded to layer 0's 256
    tensors["model.layers.1.mlp.gate_proj.weight"][200] = 1.0
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp: units past the layer's width 192.*are not zero"):
        convert_hf_checkpoint(folder, tmp_path / "back.pt")


def test_lightning_checkpoint_exports_through_the_command(trained_run, tmp_path: Path, capsys) -> None:
    """`python -m lightning_most export --ckpt last.ckpt` reads the checkpoint with weights_only=True."""
    main(["export", "--ckpt", str(trained_run.checkpoint), "--out", str(tmp_path / "hf")])
    assert "transformers cannot run the modality mask" in capsys.readouterr().out
    saved = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=True)
    hparams = saved["hyper_parameters"]
    assert config_from_hf(tmp_path / "hf") == stage_model_config(hparams)  # the data-linked width and units too
    expected = {k.removeprefix("backbone."): v for k, v in saved["state_dict"].items() if k.startswith("backbone.")}
    _assert_same_state(torch.load(convert_hf_checkpoint(tmp_path / "hf", tmp_path / "back.pt"), weights_only=True), expected)


def test_state_dict_file_exports_with_the_printed_preset_and_refuses_without(tmp_path: Path, capsys) -> None:
    model = _random_backbone("vanilla")
    torch.save(model.state_dict(), tmp_path / "backbone.pt")
    overrides = {"num_audio_units": UNITS, "audio_feature_dim": FEATURES, **BACKBONES["vanilla"]}
    main(["export", "--ckpt", str(tmp_path / "backbone.pt"), "--out", str(tmp_path / "hf"), "--backbone", "tiny",
          "--backbone_overrides", json.dumps(overrides), "--dtype", "bfloat16"])
    back = torch.load(convert_hf_checkpoint(tmp_path / "hf", tmp_path / "back.pt"), weights_only=True)
    _assert_same_state(back, {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    main(["convert", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "again.pt")])
    assert "was written by export: its own config and audio parts were used" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(tmp_path / "backbone.pt"), "--out", str(tmp_path / "x")])
    assert "holds backbone tensors only: give --backbone and --backbone_overrides" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(tmp_path / "backbone.pt"), "--out", str(tmp_path / "x"), "--backbone", "tiny"])
    assert "does not fit its backbone config" in capsys.readouterr().err


def test_exported_config_is_complete(tmp_path: Path) -> None:
    """most_config holds every ModelConfig field (so convert needs no defaults)."""
    model = _random_backbone("mamoe")
    saved = json.loads((export_backbone(model.config, model.state_dict(), tmp_path) / "config.json").read_text())
    assert set(saved["most_config"]) == {f for f in ModelConfig.__dataclass_fields__}

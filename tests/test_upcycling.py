"""Upcycling: before training, the MoE built from a dense backbone gives the dense logits where promised."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import build_config
from lightning_most.upcycling import UpcyclingConfig, load_dense, main, upcycle_state_dict, upcycled_config

UNITS = 16


def _dense(seed: int = 0, attention: dict | None = None) -> tuple[MoSTBackbone, dict]:
    torch.manual_seed(seed)
    config = build_config("tiny", {"num_layers": 3, "first_k_dense": 3, "intermediate_size": 64, "num_audio_units": UNITS,
                                   "attention": attention or {}})
    model = MoSTBackbone(config)
    with torch.no_grad():  # O(1) logits, so that equal means equal
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.15)
    return model.eval(), {k: v.clone() for k, v in model.state_dict().items()}


def _logits(model: MoSTBackbone) -> torch.Tensor:
    torch.manual_seed(1)
    text = torch.randint(0, 256, (2, 10))
    audio = torch.randint(267, 267 + UNITS, (2, 14))
    ids = torch.cat([text, audio], dim=1)
    modality = torch.cat([torch.zeros_like(text), torch.ones_like(audio)], dim=1)
    with torch.no_grad():
        return model(ids, modality).logits


def _upcycled(state: dict, dense_config, spec: UpcyclingConfig) -> MoSTBackbone:
    config = upcycled_config(dense_config, state, spec)
    model = MoSTBackbone(config)
    model.load_state_dict(upcycle_state_dict(state, config, spec), strict=True)
    return model.eval()


@pytest.mark.parametrize("variant", ["mamoe", "vanilla", "noshared"])
@pytest.mark.parametrize("gate", ["masked_softmax", "group_renormalized"])
def test_copies_with_zero_router_give_the_dense_logits(variant: str, gate: str) -> None:
    dense, state = _dense()
    spec = UpcyclingConfig(variant=variant, num_routed_experts=8, top_k=2, gate=gate, first_k_dense=1)
    moe = _upcycled(state, dense.config, spec)
    assert moe.config.is_moe_layer(1) and moe.config.moe.expert_intermediate_size == 64
    torch.testing.assert_close(_logits(moe), _logits(dense), atol=1e-5, rtol=1e-5)


def test_slices_give_the_dense_logits_when_every_token_uses_every_slice() -> None:
    dense, state = _dense(attention={"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16})
    # 8 experts, halves: 4 per modality, each group holding the 4 slices; top-4 uses all of them.
    spec = UpcyclingConfig(num_routed_experts=8, top_k=4, construction="slice", num_slices=4, first_k_dense=1)
    moe = _upcycled(state, dense.config, spec)
    assert moe.config.moe.expert_intermediate_size == 16
    torch.testing.assert_close(_logits(moe), _logits(dense), atol=1e-5, rtol=1e-5)
    # Fine-grained with fewer active slices: not the dense model (only in expectation), but close in scale.
    partial = _upcycled(state, dense.config, dataclasses.replace(spec, top_k=2))
    assert not torch.allclose(_logits(partial), _logits(dense), atol=1e-3)


@pytest.mark.parametrize("construction, num_slices", [("copy", 1), ("slice", 4)])
def test_two_shared_experts_load_and_keep_the_dense_logits(construction: str, num_slices: int) -> None:
    # The grid's fine-grained start (scripts/upcycled_grid.sh): 16 experts, groups of 8 holding each slice twice,
    # top-4; and copies, whose 2 shared experts are twice as wide as the dense MLP (its units repeat).
    dense, state = _dense()
    spec = UpcyclingConfig(num_routed_experts=16 if construction == "slice" else 8, num_shared_experts=2,
                           top_k=num_slices if construction == "slice" else 2, construction=construction,
                           num_slices=num_slices, first_k_dense=1)
    moe = _upcycled(state, dense.config, spec)
    width = 2 * 64 // num_slices
    shared_gate = moe.state_dict()["layers.1.mlp.shared_experts.gate_proj.weight"]
    assert shared_gate.shape[0] == width
    torch.testing.assert_close(shared_gate, state["layers.1.mlp.gate_proj.weight"].repeat(2, 1)[:width])
    torch.testing.assert_close(_logits(moe), _logits(dense), atol=1e-5, rtol=1e-5)


def test_noise_and_a_random_router_break_the_equality_and_are_seeded() -> None:
    dense, state = _dense()
    noisy = UpcyclingConfig(num_routed_experts=8, top_k=2, noise_std=0.1, router_init="normal", first_k_dense=1)
    a, b = _upcycled(state, dense.config, noisy), _upcycled(state, dense.config, noisy)
    assert not torch.allclose(_logits(a), _logits(dense), atol=1e-4)
    torch.testing.assert_close(_logits(a), _logits(b))
    experts = a.layers[1].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])


def test_bad_requests_are_refused() -> None:
    dense, state = _dense()
    with pytest.raises(ValueError, match="not divisible by num_slices=5"):
        upcycled_config(dense.config, state, UpcyclingConfig(construction="slice", num_slices=5))
    with pytest.raises(ValueError, match="num_slices must be 1"):
        UpcyclingConfig(num_slices=2)
    moe_config = build_config("tiny", {"num_layers": 2})
    with pytest.raises(ValueError, match="already has MoE layers"):
        upcycled_config(moe_config, MoSTBackbone(moe_config).state_dict(), UpcyclingConfig())


def test_command_writes_weights_and_config_that_a_stage_loads(tmp_path: Path) -> None:
    """CLI from a Lightning checkpoint of a dense stage; its YAML + .pt build a StageModule with the dense logits."""
    from lightning_most.stages import Stage1Module

    overrides = {"num_layers": 3, "first_k_dense": 3, "intermediate_size": 64, "num_audio_units": UNITS}
    stage = Stage1Module(backbone="tiny", backbone_overrides=overrides)
    stage.configure_model()
    torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}, tmp_path / "dense.ckpt")
    config, _ = load_dense(tmp_path / "dense.ckpt")
    assert config.num_layers == 3 and not config.is_moe_layer(2)

    main(["--src", str(tmp_path / "dense.ckpt"), "--out", str(tmp_path / "moe.pt"), "--out_config",
          str(tmp_path / "moe.yaml"), "--variant", "mamoe", "--num_routed_experts", "4", "--top_k", "1"])
    init_args = yaml.safe_load((tmp_path / "moe.yaml").read_text())["model"]["init_args"]
    assert init_args["init_from"] == str(tmp_path / "moe.pt")
    moe_stage = Stage1Module(**init_args)
    moe_stage.configure_model()
    assert moe_stage.backbone.config.is_moe_layer(1)
    torch.testing.assert_close(_logits(moe_stage.backbone.eval()), _logits(stage.backbone.eval()), atol=1e-5, rtol=1e-5)


def test_a_text_lm_start_leaves_the_audio_encoder_fresh(tmp_path: Path) -> None:
    """init_from a text LM (no audio encoder / CTC head) into a stage that has them: those start fresh, the rest loads."""
    from lightning_most.stages import Stage1Module

    dense, state = _dense()
    spec = UpcyclingConfig(num_routed_experts=4, top_k=1, first_k_dense=1)
    config = upcycled_config(dense.config, state, spec)
    torch.save(upcycle_state_dict(state, config, spec), tmp_path / "moe.pt")
    overrides = {"num_layers": 3, "first_k_dense": 1, "intermediate_size": 64, "num_audio_units": UNITS,
                 "moe": {"num_routed_experts": 4, "top_k": 1, "expert_intermediate_size": 64,
                         "routed_scaling_factor": config.moe.routed_scaling_factor},
                 "audio_encoder": {"num_layers": 1, "ctc_head": True}}
    stage = Stage1Module(backbone="tiny", backbone_overrides=overrides, init_from=str(tmp_path / "moe.pt"))
    stage.configure_model()
    saved = torch.load(tmp_path / "moe.pt")
    torch.testing.assert_close(stage.backbone.layers[1].mlp.experts.down_proj, saved["layers.1.mlp.experts.down_proj"])
    assert stage.backbone.audio_encoder is not None and stage.backbone.ctc_head is not None
    # A file that lacks other parts is still refused.
    bad = {k: v for k, v in torch.load(tmp_path / "moe.pt").items() if not k.startswith("layers.2.")}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing"):
        Stage1Module(backbone="tiny", backbone_overrides=overrides, init_from=str(tmp_path / "bad.pt")).configure_model()

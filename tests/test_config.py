"""Config presets and typed overrides."""

from __future__ import annotations

import pytest

from lightning_most.config import PRESETS, ModelOverrides, MoEOverrides, build_config


def test_overrides_merge_into_preset() -> None:
    cfg = build_config("deepseek-v2-lite", {"num_layers": 4, "moe": {"variant": "vanilla"}})
    assert cfg.num_layers == 4 and cfg.moe.variant == "vanilla"
    assert cfg.moe.num_routed_experts == 64 and cfg.hidden_size == 2048  # untouched fields keep the preset
    typed = build_config("tiny", ModelOverrides(moe=MoEOverrides(top_k=1)))
    assert typed.moe.top_k == 1 and typed.num_layers == PRESETS["tiny"].num_layers


def test_presets_are_not_mutated_by_overrides() -> None:
    build_config("tiny", {"moe": {"top_k": 1}})
    assert PRESETS["tiny"].moe.top_k == 2


def test_bad_overrides_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"backbone_overrides.moe.topk is not a backbone field"):
        build_config("tiny", {"moe": {"topk": 3}})
    with pytest.raises(ValueError, match="unknown backbone preset 'huge'"):
        build_config("huge")
    with pytest.raises(ValueError, match="first_k_dense=9"):
        build_config("tiny", {"first_k_dense": 9})


def test_noshared_and_dense_variants() -> None:
    assert build_config("tiny", {"moe": {"variant": "noshared"}}).moe.shared_experts == 0
    dense = build_config("tiny", {"moe": {"variant": "dense"}})
    assert not any(dense.is_moe_layer(i) for i in range(dense.num_layers))


def test_rope_scaling_override_turns_a_presets_scaling_off_only_when_said() -> None:
    assert PRESETS["llama-3.2-3b"].attention.rope_scaling["rope_type"] == "llama3"
    plain = build_config("llama-3.2-3b", {"attention": {"rope_scaling": {"rope_type": "default"}}})
    assert plain.attention.rope_scaling is None  # plain RoPE, stored as the presets without scaling store it
    kept = build_config("llama-3.2-3b", {"attention": {"rope_scaling": None}})
    assert kept.attention.rope_scaling == PRESETS["llama-3.2-3b"].attention.rope_scaling  # null = not set
    with pytest.raises(ValueError, match=r"rope_type 'default' \(plain RoPE\) takes no \['factor'\]"):
        build_config("tiny", {"attention": {"rope_scaling": {"rope_type": "default", "factor": 2.0}}})

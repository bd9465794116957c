"""Attention details checked against DeepSeek-V2's reference formulas (modeling_deepseek.py)."""

from __future__ import annotations

import math

import pytest

from lightning_most.attention import rope_frequencies


def _deepseek_yarn_get_mscale(scale: float = 1, mscale: float = 1) -> float:
    """modeling_deepseek.py's yarn_get_mscale."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@pytest.mark.parametrize(
    "mscales",
    [{}, {"mscale": 0.707}, {"mscale_all_dim": 0.707}, {"mscale": 0.707, "mscale_all_dim": 0.707},
     {"mscale": 1.0, "mscale_all_dim": 0.5}, {"mscale": 0.0}],
    ids=["neither", "mscale-only", "all-dim-only", "both-equal", "both-differ", "mscale-zero"],
)
def test_yarn_cos_sin_multiplier_is_deepseeks(mscales: dict) -> None:
    """DeepseekV2YarnRotaryEmbedding(mscale=1, mscale_all_dim=0) multiplies cos/sin by
    yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim); absent keys keep those defaults."""
    factor = 40.0
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 4096, **mscales}
    _, multiplier = rope_frequencies(64, 10000.0, scaling)
    expected = _deepseek_yarn_get_mscale(factor, mscales.get("mscale", 1)) / _deepseek_yarn_get_mscale(
        factor, mscales.get("mscale_all_dim", 0)
    )
    assert multiplier == pytest.approx(expected, rel=1e-12)


def test_mscale_alone_changes_the_multiplier() -> None:
    """With mscale but no mscale_all_dim the multiplier is 1 + 0.1 * mscale * ln(factor), not mscale-free."""
    scaling = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 0.707}
    assert rope_frequencies(64, 10000.0, scaling)[1] == pytest.approx(1 + 0.0707 * math.log(40.0))
    explicit = {**scaling, "attention_factor": 1.25}  # transformers' explicit value wins
    assert rope_frequencies(64, 10000.0, explicit)[1] == 1.25

"""Expert partitions: index rules, and clustering that recovers a grouping built into the routers."""

from __future__ import annotations

import pytest
import torch
import yaml

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import MoEConfig, build_config
from lightning_most.partitions import cluster_experts, index_partition, partition_yaml, routing_usage

ODD, EVEN = [1, 3, 5, 7], [0, 2, 4, 6]


def test_index_partitions() -> None:
    assert index_partition(8, 2, "halves") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert index_partition(16, 2, "ratio", [3, 1]) == [list(range(12)), list(range(12, 16))]
    assert index_partition(6, 2, "interleaved") == [[0, 2, 4], [1, 3, 5]]
    assert MoEConfig(num_routed_experts=8, top_k=1, partition="ratio", partition_ratio=[3, 1]).groups()[1] == [6, 7]
    with pytest.raises(ValueError, match="partition=ratio needs moe.partition_ratio"):
        MoEConfig(partition="ratio")
    with pytest.raises(ValueError, match="leaves a modality without experts"):
        MoEConfig(num_routed_experts=4, top_k=1, partition="ratio", partition_ratio=[10, 1])
    with pytest.raises(ValueError, match="only read by partition=ratio"):
        MoEConfig(partition_ratio=[1, 1])


def _constructed_backbone(seed: int = 0) -> MoSTBackbone:
    """Two MoE layers whose routers send text to the odd experts (layer 1) / even experts (layer 2), audio opposite.

    Attention outputs, the dense MLP and the first MoE layer's experts are zeroed, so each MoE layer sees the
    embeddings: text rows carry +3v, audio-unit rows -3v; router rows are +-5v plus noise (so every expert of a
    side wins for some tokens).
    """
    torch.manual_seed(seed)
    config = build_config("tiny", {"num_layers": 3, "first_k_dense": 1, "text_vocab_size": 267, "num_audio_units": 32,
                                   "moe": {"variant": "vanilla", "num_routed_experts": 8, "top_k": 2}})
    model = MoSTBackbone(config)
    d = config.hidden_size
    v = torch.nn.functional.normalize(torch.randn(d), dim=0)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
        model.layers[0].mlp.down_proj.weight.zero_()
        model.layers[1].mlp.experts.down_proj.zero_()
        model.layers[1].mlp.shared_experts.down_proj.weight.zero_()
        model.embed_tokens.weight.normal_()
        model.embed_tokens.weight[:267] += 3 * v
        model.embed_tokens.weight[267:] -= 3 * v
        for layer, text_experts in ((model.layers[1], ODD), (model.layers[2], EVEN)):
            sign = torch.tensor([1.0 if e in text_experts else -1.0 for e in range(8)])
            layer.mlp.router.weight.copy_(0.5 * torch.randn(8, d) + 5 * sign[:, None] * v)
    return model


def _batches(num: int = 4) -> list[dict]:
    batches = []
    for _ in range(num):
        text = torch.randint(0, 256, (2, 12))
        audio = torch.randint(267, 267 + 32, (2, 20))
        ids = torch.cat([text, audio], dim=1)
        modality = torch.cat([torch.zeros_like(text), torch.ones_like(audio)], dim=1)
        batches.append({"input_ids": ids, "modality_ids": modality})
    return batches


def test_clustering_recovers_the_grouping_built_into_the_routers() -> None:
    usage = routing_usage(_constructed_backbone(), _batches())
    assert usage.shape == (2, 2, 8)
    assert (usage[0, 0, ODD] > 0).all() and (usage[0, 1, EVEN] > 0).all()  # every expert of a side is used
    assert cluster_experts(usage, [4, 4]) == [[ODD, EVEN], [EVEN, ODD]]


def test_clustering_respects_unequal_group_sizes() -> None:
    # Layer 0: text uses experts 0-2 and a little of 3; audio mostly 3-7. A 6:2 split gives text 0-3 + its next
    # best, and audio the two experts it uses relatively most.
    usage = torch.tensor([[[30.0, 30, 30, 5, 4, 1, 0, 0], [0, 0, 1, 10, 10, 10, 40, 40]]])
    assert cluster_experts(usage, [6, 2]) == [[[0, 1, 2, 3, 4, 5], [6, 7]]]
    with pytest.raises(ValueError, match="no tokens"):
        cluster_experts(torch.zeros(1, 2, 8), [4, 4])


def test_clustered_groups_round_trip_through_yaml_into_the_backbone() -> None:
    usage = routing_usage(_constructed_backbone(), _batches())
    groups = cluster_experts(usage, [4, 4])
    text = partition_yaml(groups, "python -m lightning_most partition ...", usage)
    moe = yaml.safe_load(text)["model"]["init_args"]["backbone_overrides"]["moe"]
    config = build_config("tiny", {"num_layers": 3, "first_k_dense": 1, "moe": {"num_routed_experts": 8, **moe}})
    model = MoSTBackbone(config)
    for layer, expected in zip(model.layers[1:], groups):
        mask = layer.mlp.router.group_mask  # (M, E)
        assert [torch.nonzero(row).flatten().tolist() for row in mask] == expected
    with pytest.raises(ValueError, match="layer_expert_groups has 2 layers but the backbone has 1"):
        build_config("tiny", {"num_layers": 2, "first_k_dense": 1, "moe": {"num_routed_experts": 8, **moe}})


def test_routing_usage_refuses_a_masked_router() -> None:
    model = MoSTBackbone(build_config("tiny", {"num_layers": 2}))
    with pytest.raises(ValueError, match="moe.variant=vanilla"):
        routing_usage(model, _batches(1))


def test_partition_builds_the_model_as_fit_does() -> None:
    """`partition --config conf/quickstart.yaml ...` reads a fit config whole (its `ckpt_path` / `weights_only`
    keys too) and links the data module's feature width and unit count into the model, as `fit` does."""
    from lightning_most.partitions import _model_and_data

    model, datamodule = _model_and_data(["conf/quickstart.yaml", "conf/grid/pretrained_moe.yaml"], [])
    assert model.hparams.init_from == "runs/pretrain_text/moe.pt"
    assert (model.config.audio_feature_dim, model.config.num_audio_units) == (768, 200)
    assert (datamodule.feature_dim, datamodule.num_units) == (768, 200)

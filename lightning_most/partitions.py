"""Expert partitions: which routed experts each modality may use, by index rule or by clustering routing.

Index rules (`MoEConfig.partition`, the same groups in every MoE layer), for E experts and M modalities:

    halves       M equal contiguous blocks: text 0..E/2-1, audio E/2..E-1 (MoST's split)
    ratio        contiguous blocks sized by `partition_ratio`, e.g. [3, 1]: text 0..3E/4-1, audio the rest
    interleaved  expert e -> modality e % M

Clustering (`python -m lightning_most partition`, per layer, written into a YAML as
`moe.layer_expert_groups`): held-out text and audio are routed through a pretrained MoE with the
unmasked (vanilla) router, and each expert goes to the modality that uses it relatively more:

1. usage[m, e] = top-k assignments of modality m's tokens to expert e, summed over the data (`routing_usage`);
2. share[m, e] = usage[m, e] / sum_e usage[m, e]: each modality's routing distribution, so a modality
   with more tokens does not claim every expert;
3. affinity[m, e] = share[m, e] / sum_m share[m, e] (1/M for an expert no modality uses);
4. experts are assigned to modalities maximising the summed affinity, subject to the group sizes of
   the index rule (halves or ratio): an optimal assignment (Hungarian algorithm, scipy's
   `linear_sum_assignment`, over one slot per expert of each group). For two modalities this is
   "the n_text experts with the highest text affinity go to text".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

INDEX_PARTITIONS = ("halves", "ratio", "interleaved")


def check_groups(groups: list[list[int]], num_experts: int, num_modalities: int, where: str) -> None:
    """Raise a ValueError naming `where` unless `groups` holds one list of distinct valid experts per modality."""
    if len(groups) != num_modalities:
        raise ValueError(
            f"{where} has {len(groups)} groups but moe.num_modalities is {num_modalities}: "
            "give one list of expert indices per modality"
        )
    for m, group in enumerate(groups):
        bad = [e for e in group if not 0 <= e < num_experts]
        if bad:
            raise ValueError(f"{where}[{m}] names experts {bad} outside 0..{num_experts - 1}")
        if len(set(group)) != len(group):
            raise ValueError(f"{where}[{m}] lists an expert twice: {group}")


def group_sizes(num_experts: int, num_modalities: int, ratio: list[float] | None = None) -> list[int]:
    """Experts per modality: proportional to `ratio` (equal when None), each >= 1, summing to num_experts."""
    E, M = num_experts, num_modalities
    if E < M:
        raise ValueError(f"moe.num_routed_experts={E} cannot be split into {M} modality groups")
    ratio = [1.0] * M if ratio is None else list(ratio)
    if len(ratio) != M or any(r <= 0 for r in ratio):
        raise ValueError(f"moe.partition_ratio={ratio} must hold {M} positive numbers, one per modality")
    total = sum(ratio)
    bounds = [round(E * sum(ratio[:m]) / total) for m in range(M + 1)]
    sizes = [bounds[m + 1] - bounds[m] for m in range(M)]
    if min(sizes) < 1:
        raise ValueError(f"moe.partition_ratio={ratio} leaves a modality without experts out of {E}")
    return sizes


def index_partition(num_experts: int, num_modalities: int, partition: str, ratio: list[float] | None = None) -> list[list[int]]:
    """Expert indices per modality by an index rule (halves, ratio, interleaved; see the module docstring)."""
    if partition not in INDEX_PARTITIONS:
        raise ValueError(f"moe.partition={partition!r}: choose one of {INDEX_PARTITIONS}")
    if partition == "ratio" and ratio is None:
        raise ValueError("moe.partition=ratio needs moe.partition_ratio, e.g. [3, 1] for 3/4 text experts")
    if partition != "ratio" and ratio is not None:
        raise ValueError(f"moe.partition_ratio is only read by partition=ratio, not {partition!r}: remove it")
    if partition == "interleaved":
        if num_experts < num_modalities:
            raise ValueError(f"moe.num_routed_experts={num_experts} cannot be split into {num_modalities} modality groups")
        return [list(range(m, num_experts, num_modalities)) for m in range(num_modalities)]
    sizes = group_sizes(num_experts, num_modalities, ratio)
    starts = [sum(sizes[:m]) for m in range(num_modalities)]
    return [list(range(start, start + size)) for start, size in zip(starts, sizes)]


@torch.no_grad()
def routing_usage(backbone: torch.nn.Module, batches: Iterable[dict]) -> Tensor:
    """Top-k assignments (L, M, E) of each modality's tokens to each expert of every MoE layer, over `batches`.

    `backbone` must route without a modality mask (variant vanilla); a batch holds the backbone's inputs
    (input_ids, modality_ids, and optionally attention_mask, audio_features, feature_mask).
    """
    if backbone.config.moe.variant != "vanilla":
        raise ValueError(
            f"routing statistics need the unmasked router: build the backbone with moe.variant=vanilla, "
            f"not {backbone.config.moe.variant!r}"
        )
    from lightning_most.routing_analysis import expert_load

    return expert_load(backbone, batches)


def modality_affinity(usage: Tensor) -> Tensor:
    """affinity (L, M, E): each modality's share of an expert, after normalising every modality's usage to 1."""
    share = usage / usage.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # (L, M, E)
    total = share.sum(dim=1, keepdim=True)  # (L, 1, E)
    uniform = torch.full_like(share, 1.0 / usage.shape[1])
    return torch.where(total > 0, share / total.clamp(min=1e-12), uniform)


def cluster_experts(usage: Tensor, sizes: list[int]) -> list[list[list[int]]]:
    """Groups per layer from routing usage (L, M, E): the optimal assignment of experts to modalities by
    affinity, with `sizes[m]` experts for modality m (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    L, M, E = usage.shape
    if len(sizes) != M or sum(sizes) != E:
        raise ValueError(f"group sizes {sizes} must give each of {M} modalities a share of the {E} experts")
    if usage.sum(dim=-1).min() <= 0:
        empty = [(layer, m) for layer in range(L) for m in range(M) if usage[layer, m].sum() <= 0]
        raise ValueError(f"no tokens of (layer, modality) {empty} were routed: give data of every modality")
    slots = [m for m in range(M) for _ in range(sizes[m])]  # (E,) modality of each slot
    groups_per_layer = []
    for affinity in modality_affinity(usage):  # (M, E)
        cost = -affinity[slots].double().numpy()  # (slots, experts)
        rows, cols = linear_sum_assignment(cost)
        groups = [sorted(int(e) for r, e in zip(rows, cols) if slots[r] == m) for m in range(M)]
        groups_per_layer.append(groups)
    return groups_per_layer


def partition_yaml(layer_groups: list[list[list[int]]], command: str, usage: Tensor) -> str:
    """A config fragment setting `moe.layer_expert_groups`, for `fit --config`."""
    lines = [
        "# Expert groups per MoE layer, clustered from pretrained routing (lightning_most/partitions.py). Written by:",
        f"#   {command}",
        "# Tokens routed per layer and modality: " + json.dumps(usage.sum(dim=-1).long().tolist()),
        "model:",
        "  init_args:",
        "    backbone_overrides:",
        "      moe:",
        "        layer_expert_groups:",
    ]
    lines += [f"          - {json.dumps(groups)}" for groups in layer_groups]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    """`python -m lightning_most partition --config FIT.yaml [--config ...] --out GROUPS.yaml [-- FIT OVERRIDES]`.

    The fit configs name the pretrained start (`model.init_args.init_from`), the target partition's group
    sizes (moe.partition halves or ratio) and the data module whose dev split is routed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m lightning_most partition", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="fit config(s), as for `fit`")
    parser.add_argument("--out", required=True, help="YAML to write (pass it to fit with --config)")
    parser.add_argument("--max_batches", type=int, default=20, help="dev batches routed (default 20)")
    args = parser.parse_args(argv)
    for path in args.config:
        if not Path(path).is_file():
            parser.error(f"--config {path} does not exist")
    model, datamodule = _model_and_data(args.config, extra)
    moe = model.config.moe
    if moe.variant == "dense":
        parser.error("the configured backbone is dense: there are no experts to partition")
    if not model.hparams.init_from:
        print("partition: warning: no model.init_args.init_from; routing a randomly initialised model", file=sys.stderr)
    sizes = [len(g) for g in moe.groups()]
    vanilla = dataclasses.replace(moe, variant="vanilla", expert_groups=None, layer_expert_groups=None)
    model.config = dataclasses.replace(model.config, moe=vanilla)
    model.configure_model()
    datamodule.prepare_data()
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    batches = (batch for i, batch in zip(range(args.max_batches), loader))
    usage = routing_usage(model.backbone, batches)
    layer_groups = cluster_experts(usage, sizes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m lightning_most partition " + " ".join(argv + (["--", *extra] if extra else []))
    out.write_text(partition_yaml(layer_groups, command, usage))
    print(f"wrote {out}: groups of {len(layer_groups)} MoE layers, sizes {sizes}")
    return out


def _model_and_data(configs: list[str], extra: list[str]):
    """The StageModule and data module that `fit --config ...` would build (nothing is run): the model takes the
    data module's linked arguments as under `fit`, and a fit config's `ckpt_path` / `weights_only` are accepted."""
    import lightning.pytorch as pl

    from lightning_most.main import MostCLI
    from lightning_most.stages.base import StageModule

    class BuildOnlyCLI(MostCLI):
        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            parser.add_argument("--ckpt_path", type=str | None, default=None, help="a fit key; not read here")
            parser.add_argument("--weights_only", type=bool | None, default=None, help="a fit key; not read here")

    args = [arg for config in configs for arg in ("--config", config)] + extra
    cli = BuildOnlyCLI(
        model_class=StageModule, datamodule_class=pl.LightningDataModule, subclass_mode_model=True,
        subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"}, run=False, args=args,
        save_config_callback=None,
    )
    return cli.model, cli.datamodule

"""Sparse upcycling: an MoE backbone (vanilla, MAMoE or NoShared) built from a dense one (MoST section 6.1).

Every non-MLP weight (embeddings, attention, norms, heads, audio parts) is copied. Decoder layers below
`first_k_dense` keep their dense MLP; each later layer's SwiGLU MLP (width I) becomes an MoE block:

- construction `copy`: every routed expert is a copy of the dense MLP (expert width I);
- construction `slice` (fine-grained): the intermediate units are cut into `num_slices` slices of
  width I / num_slices; the j-th expert of each modality group (the j-th of all experts for vanilla)
  holds slice j mod num_slices. SwiGLU is a sum over its intermediate units, so the slices add up to
  the dense MLP.
- Shared experts (width num_shared_experts * expert width) hold the MLP's first units in gate/up, the
  units repeating when they are wider than the MLP (copies with 2 or more shared), with a zero down
  projection: they add nothing at the start and learn from the first step.
- Router initialisation `zero` (default): all logits 0, so every expert of a token's group has the same
  score u (1/E for the softmax over all E experts of vanilla and masked_softmax, 1/|group| for
  group_renormalized). `normal`: N(0, initializer_range), as a fresh model.
- `routed_scaling_factor` is set to P / (top_k * u), P = num_slices (1 for copy): under the zero router each
  chosen expert then weighs P / top_k.

What is promised at initialisation (tested in tests/test_upcycling.py): with router `zero` and no noise,
- copy: the upcycled model's logits equal the dense model's (k copies of the MLP, each weighing 1/k);
- slice with top_k == num_slices and each group holding exactly num_slices experts: equal logits too
  (every token uses every slice once with weight 1). With top_k < num_slices a token uses k of the
  slices, each weighing P / k: the MLP's output in expectation over which slices, not exactly.
Ties between equal scores are broken by expert index, so before training every token of a modality
picks the same experts; `noise_std` (relative to each weight's standard deviation) breaks that
symmetry, and exactness with it.

Command line: `python -m lightning_most upcycle --src DENSE --out moe.pt --out_config moe.yaml ...`, where
DENSE is a Hugging Face Llama folder (as `convert` reads) or a Lightning checkpoint of a dense backbone;
the .pt is what `model.init_args.init_from` loads, the YAML the backbone settings it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from lightning_most.config import GateKind, ModelConfig, MoEConfig, Partition, build_config
from lightning_most.safe_loading import load_checkpoint

Construction = Literal["copy", "slice"]
RouterInit = Literal["zero", "normal"]


@dataclass
class UpcyclingConfig:
    """The MoE to build from a dense backbone (see the module docstring)."""

    variant: Literal["mamoe", "vanilla", "noshared"] = "mamoe"
    num_routed_experts: int = 8
    num_shared_experts: int = 1
    top_k: int = 2
    construction: Construction = "copy"
    num_slices: int = 1
    """Slices of the dense MLP (construction slice); expert width = intermediate_size / num_slices."""
    first_k_dense: int = 1
    """Leading layers that keep their dense MLP."""
    gate: GateKind = "masked_softmax"
    partition: Partition = "halves"
    partition_ratio: list[float] | None = None
    router_init: RouterInit = "zero"
    noise_std: float = 0.0
    """Gaussian noise added to each expert's weights, as a fraction of that weight's standard deviation."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.construction == "copy" and self.num_slices != 1:
            raise ValueError(f"construction=copy uses the whole MLP per expert: num_slices must be 1, got {self.num_slices}")
        if self.num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {self.num_slices}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


def _dense_width(state: dict[str, Tensor], layer: int) -> int:
    key = f"layers.{layer}.mlp.gate_proj.weight"
    if key not in state:
        raise ValueError(f"layer {layer} of the source has no dense MLP ({key}): upcycling needs a dense backbone")
    return state[key].shape[0]


def upcycled_config(dense: ModelConfig, state: dict[str, Tensor], spec: UpcyclingConfig) -> ModelConfig:
    """The MoE backbone config that `upcycle_state_dict` fills, from the dense config and its weights."""
    if any(dense.is_moe_layer(i) for i in range(dense.num_layers)):
        raise ValueError("the source backbone already has MoE layers: upcycling starts from a dense backbone")
    if not 0 <= spec.first_k_dense < dense.num_layers:
        raise ValueError(f"first_k_dense={spec.first_k_dense} must leave at least one of {dense.num_layers} layers to upcycle")
    widths = {_dense_width(state, i) for i in range(spec.first_k_dense, dense.num_layers)}
    if len(widths) != 1:
        raise ValueError(f"the layers to upcycle have MLP widths {sorted(widths)}: they must share one width")
    width = widths.pop()
    if width % spec.num_slices:
        raise ValueError(f"the dense MLP width {width} is not divisible by num_slices={spec.num_slices}")
    h = width // spec.num_slices
    base = _dense_width(state, 0) if spec.first_k_dense else dense.intermediate_size
    moe = MoEConfig(
        variant=spec.variant, num_routed_experts=spec.num_routed_experts, num_shared_experts=spec.num_shared_experts,
        top_k=spec.top_k, expert_intermediate_size=h, num_modalities=dense.moe.num_modalities, gate=spec.gate,
        partition=spec.partition, partition_ratio=spec.partition_ratio,
        routed_scaling_factor=_routing_scale(spec),
    )
    return dataclasses.replace(dense, first_k_dense=spec.first_k_dense, intermediate_size=base, moe=moe)


def _uniform_score(spec: UpcyclingConfig) -> list[float]:
    """Score of each chosen expert under a zero router, per modality."""
    moe = MoEConfig(num_routed_experts=spec.num_routed_experts, top_k=spec.top_k, partition=spec.partition,
                    partition_ratio=spec.partition_ratio)
    if spec.gate == "group_renormalized" and spec.variant != "vanilla":
        return [1.0 / len(g) for g in moe.groups()]
    return [1.0 / spec.num_routed_experts]


def _routing_scale(spec: UpcyclingConfig) -> float:
    scores = set(_uniform_score(spec))
    if len(scores) != 1:
        raise ValueError("gate=group_renormalized upcycling needs groups of equal size (one routed_scaling_factor)")
    return spec.num_slices / (spec.top_k * scores.pop())


def _slice_of_expert(config: MoEConfig, num_slices: int) -> list[int]:
    """Which dense slice each routed expert holds: its position within its modality group, mod num_slices."""
    groups = [list(range(config.num_routed_experts))] if config.variant == "vanilla" else config.groups()
    slice_of = [0] * config.num_routed_experts
    for group in groups:
        for j, e in enumerate(sorted(group)):
            slice_of[e] = j % num_slices
    return slice_of


def _leading_units(weight: Tensor, width: int) -> Tensor:
    """The first `width` intermediate units (rows) of a dense gate/up weight (I, d), cycling past I.

    Shared experts are wider than the dense MLP when they are copies (width = num_shared * I): the rows
    repeat. Their down projection is zero, so what they hold changes only how they start to learn.
    """
    repeats = -(-width // weight.shape[0])
    return weight.repeat(repeats, 1)[:width].clone()


def upcycle_state_dict(state: dict[str, Tensor], config: ModelConfig, spec: UpcyclingConfig) -> dict[str, Tensor]:
    """The MoE backbone's state dict (plain keys) for `config` (from `upcycled_config`), from the dense `state`."""
    moe, d, h = config.moe, config.hidden_size, config.moe.expert_intermediate_size
    generator = torch.Generator().manual_seed(spec.seed)
    out = {k: v for k, v in state.items() if not any(k.startswith(f"layers.{i}.mlp.") for i in range(config.first_k_dense, config.num_layers))}
    slice_of = _slice_of_expert(moe, spec.num_slices)
    for i in range(config.first_k_dense, config.num_layers):
        gate, up, down = (state[f"layers.{i}.mlp.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj"))  # (I, d), (I, d), (d, I)
        pieces = [slice(s * h, (s + 1) * h) for s in range(spec.num_slices)]
        gate_up = torch.stack([torch.cat([gate[pieces[s]], up[pieces[s]]]).T for s in slice_of])  # (E, d, 2h)
        down_e = torch.stack([down[:, pieces[s]].T for s in slice_of])  # (E, h, d)
        if spec.noise_std > 0:
            gate_up = gate_up + spec.noise_std * gate_up.std() * torch.randn(gate_up.shape, generator=generator).to(gate_up.dtype)
            down_e = down_e + spec.noise_std * down_e.std() * torch.randn(down_e.shape, generator=generator).to(down_e.dtype)
        p = f"layers.{i}.mlp."
        out[p + "experts.gate_up_proj"] = gate_up.contiguous()
        out[p + "experts.down_proj"] = down_e.contiguous()
        router = torch.zeros(moe.num_routed_experts, d, dtype=gate.dtype)
        if spec.router_init == "normal":
            router.normal_(std=config.initializer_range, generator=generator)
        out[p + "router.weight"] = router
        if moe.shared_experts:
            width = moe.shared_experts * h
            out[p + "shared_experts.gate_proj.weight"] = _leading_units(gate, width)
            out[p + "shared_experts.up_proj.weight"] = _leading_units(up, width)
            out[p + "shared_experts.down_proj.weight"] = torch.zeros(d, width, dtype=down.dtype)
    return out


def load_dense(src: str | Path, num_audio_units: int | None = None, audio_feature_dim: int | None = None,
               text_vocab_size: int | None = None) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(config, backbone state dict) of a dense source: a Hugging Face Llama folder or a Lightning checkpoint."""
    src = Path(src)
    if src.is_dir():
        from lightning_most.convert import config_from_hf, hf_state_dict

        config = config_from_hf(src, num_audio_units, audio_feature_dim, "mamoe", text_vocab_size)
        return config, hf_state_dict(src, config)
    if not src.is_file():
        raise FileNotFoundError(f"--src {src}: neither a Hugging Face folder nor a checkpoint file")
    ckpt = load_checkpoint(src)  # weights only: UnsafeCheckpointError (a ValueError) names the file
    if "hyper_parameters" not in ckpt:
        raise ValueError(f"--src {src} is not a Lightning checkpoint (no hyper_parameters): give a .ckpt or an HF folder")
    hp = ckpt["hyper_parameters"]
    overrides = hp.get("backbone_overrides")
    config = build_config(hp.get("backbone", "tiny"), dataclasses.asdict(overrides) if dataclasses.is_dataclass(overrides) else overrides)
    state = {k.removeprefix("backbone."): v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    return config, state


def config_yaml(config: ModelConfig, init_from: Path, command: str) -> str:
    """A fit config fragment: the preset, the backbone_overrides of the upcycled model, and init_from."""
    from lightning_most.convert import preset_overrides

    preset, overrides = preset_overrides(config)
    return "\n".join([
        "# Upcycled MoE backbone (lightning_most/upcycling.py). Written by:",
        f"#   {command}",
        "model:",
        "  init_args:",
        f"    backbone: {preset}",
        f"    backbone_overrides: {json.dumps(overrides)}",
        f"    init_from: {init_from}",
    ]) + "\n"


def main(argv: list[str] | None = None) -> Path:
    """`python -m lightning_most upcycle --src DENSE --out moe.pt [--out_config moe.yaml] [...]`."""
    parser = argparse.ArgumentParser(prog="python -m lightning_most upcycle", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="dense source: Hugging Face Llama folder or Lightning .ckpt")
    parser.add_argument("--out", required=True, help="state dict to write (for model.init_args.init_from)")
    parser.add_argument("--out_config", help="YAML fragment with the backbone settings and init_from (for fit --config)")
    for f in dataclasses.fields(UpcyclingConfig):
        if f.name == "partition_ratio":
            parser.add_argument("--partition_ratio", type=float, nargs="+", default=None)
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    parser.add_argument("--num_audio_units", type=int, default=None, help="HF source only (default: an export's, else 500)")
    parser.add_argument("--audio_feature_dim", type=int, default=None, help="HF source only (default: an export's, else 1024)")
    parser.add_argument("--text_vocab_size", type=int, default=None, help="HF source only; default its vocab_size")
    args = parser.parse_args(argv)
    try:
        spec = UpcyclingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(UpcyclingConfig)})
        dense, state = load_dense(args.src, args.num_audio_units, args.audio_feature_dim, args.text_vocab_size)
        config = upcycled_config(dense, state, spec)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(upcycle_state_dict(state, config, spec), out)
    print(f"wrote {out}: {spec.variant}, {spec.num_routed_experts} experts ({spec.construction}), top-{spec.top_k}")
    if args.out_config:
        command = "python -m lightning_most upcycle " + " ".join(sys.argv[2:] if argv is None else argv)
        Path(args.out_config).write_text(config_yaml(config, out, command))
        print(f"wrote {args.out_config}: pass it to fit with --config")
    return out

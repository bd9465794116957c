"""Trained backbones as Hugging Face folders: the converter's other half (backbone -> config.json + safetensors).

`python -m lightning_most export --ckpt X --out DIR`, where X is a Lightning checkpoint of a stage (its
hyperparameters name the backbone) or a backbone state dict written by `convert` / `upcycle` (give it the
`--backbone` and `--backbone_overrides` that `convert` printed), read weights-only (`safe_loading`). DIR gets:

- config.json in the layout of transformers' `DeepseekV2ForCausalLM` (MLA attention) or `LlamaForCausalLM`
  (GQA attention, no MoE layers), plus `most_config`: the backbone's whole `ModelConfig` (MoE variant, expert
  groups, gate, audio settings);
- model.safetensors: the text model under transformers' names (MLA rope rows permuted back to DeepSeek's
  interleaved pairs, routed experts one by one as DeepSeek-V2's released files store them), and the audio
  parts under `most.` names: `most.embed_audio_units.weight` (the unit rows of the embedding),
  `most.audio_head.weight`, `most.audio_projector.*`, and with them `most.audio_encoder.*`, `most.ctc_head.*`.

`convert` reads DIR back to the same tensors and config. transformers 5.24 loads DIR offline (it ignores the
`most.` tensors and keys) and gives the backbone's text logits for the `vanilla` and `dense` variants.
transformers cannot run the modality mask: for `mamoe` / `noshared` it routes every token over all experts,
so its outputs are not the model's (the folder still round-trips through `convert`). Neither does its
DeepseekV2 router apply `norm_topk_prob`. The dense variant's MLPs past `first_k_dense` are narrower than the
first ones; transformers has one `intermediate_size`, so they are zero-padded to the widest (exact: a padded
unit outputs silu(0) * 0 = 0), and `convert` cuts the padding off again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

import lightning_most.stages  # noqa: F401  (allow-lists OptimizerConfig, which Python-built stages save)
from lightning_most.config import PLAIN_ROPE, ModelConfig, build_config
from lightning_most.convert import (
    ARCHITECTURES,
    AUDIO_MODULES,
    AUDIO_PREFIX,
    AUDIO_UNIT_EMBEDDINGS,
    DEEPSEEK_V2,
    LLAMA,
    MOST_CONFIG_KEY,
    _interleaved_to_halves,
)
from lightning_most.safe_loading import load_checkpoint
from lightning_most.stages.hparams import stage_model_config


class ExportError(ValueError):
    """A checkpoint that cannot be exported: the message names the file or field and what to do."""


# ---- reading a trained backbone ------------------------------------------------------------------
def load_backbone(
    path: str | Path, backbone: str | None = None, backbone_overrides: dict[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """(config, backbone state dict) of a stage's Lightning checkpoint, or of a backbone state dict file.

    Args:
        path: a `.ckpt` written by `fit`, or a state dict written by `convert` / `upcycle`.
        backbone: preset of a state dict file (a Lightning checkpoint names its own).
        backbone_overrides: `backbone_overrides` of a state dict file, as `convert` printed them.
    """
    file = Path(path)
    if not file.is_file():
        raise ExportError(f"--ckpt {file}: no such file")
    saved = load_checkpoint(file)  # weights_only=True: refuses (and names) any class not allow-listed
    if not isinstance(saved, dict):
        raise ExportError(f"--ckpt {file} is neither a Lightning checkpoint nor a backbone state dict")
    if "hyper_parameters" in saved:
        if backbone is not None or backbone_overrides is not None:
            raise ExportError(f"--ckpt {file} is a Lightning checkpoint: it names its backbone, drop --backbone*")
        hparams = saved["hyper_parameters"]
        config = stage_model_config(hparams)
        state = {k.removeprefix("backbone."): v for k, v in saved["state_dict"].items() if k.startswith("backbone.")}
    else:
        if backbone is None:
            raise ExportError(
                f"--ckpt {file} holds backbone tensors only: give --backbone and --backbone_overrides as convert "
                "printed them"
            )
        config, state = build_config(backbone, backbone_overrides), saved
    _check_fits(config, state, file)
    return config, state


def _check_fits(config: ModelConfig, state: dict[str, Tensor], file: Path) -> None:
    """Refuse a state dict whose keys or shapes are not those of `config`'s backbone."""
    from lightning_most.backbone import MoSTBackbone

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MoSTBackbone(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or reshaped:
        raise ExportError(
            f"--ckpt {file} does not fit its backbone config: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"other shapes {[(k, got[k], expected[k]) for k in reshaped[:3]]}"
        )


# ---- backbone -> Hugging Face layout -------------------------------------------------------------
def hf_architecture(config: ModelConfig) -> str:
    """The transformers class whose layout holds `config`: DeepSeek-V2 for MLA, Llama for GQA without MoE."""
    if config.attention.kind == "mla":
        return DEEPSEEK_V2
    if any(config.is_moe_layer(i) for i in range(config.num_layers)):
        raise ExportError(
            "attention.kind='gqa' with MoE layers has no transformers layout (DeepSeek-V2 attends with MLA, Llama "
            "has no MoE): export a dense model (moe.variant=dense or first_k_dense=num_layers) or an MLA one"
        )
    return LLAMA


def dense_width(config: ModelConfig) -> int:
    """The one intermediate_size of the exported dense MLPs: the widest (narrower ones are zero-padded)."""
    widths = [config.dense_mlp_width(i) for i in range(config.num_layers) if not config.is_moe_layer(i)]
    return max(widths, default=config.intermediate_size)


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of the exported folder: transformers' fields, and the whole backbone config under `most_config`."""
    arch, a, moe = hf_architecture(config), config.attention, config.moe
    common = {
        "architectures": [arch],
        "model_type": ARCHITECTURES[arch],
        "vocab_size": config.text_vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": dense_width(config),
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": a.num_heads,
        "max_position_embeddings": config.max_position,
        "rms_norm_eps": config.rms_norm_eps,
        "initializer_range": config.initializer_range,
        "tie_word_embeddings": config.tie_text_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_parameters": {**(a.rope_scaling or PLAIN_ROPE), "rope_theta": a.rope_theta},
        "dtype": str(dtype).removeprefix("torch."),
    }
    if arch == LLAMA:
        specific = {"num_key_value_heads": a.num_kv_heads, "head_dim": a.head_dim}
    else:
        has_moe = any(config.is_moe_layer(i) for i in range(config.num_layers))
        specific = {
            "num_key_value_heads": a.num_heads,
            "q_lora_rank": a.q_lora_rank,
            "kv_lora_rank": a.kv_lora_rank,
            "qk_nope_head_dim": a.qk_nope_head_dim,
            "qk_rope_head_dim": a.qk_rope_head_dim,
            "v_head_dim": a.v_head_dim,
            "first_k_dense_replace": config.first_k_dense if has_moe else config.num_layers,  # dense: all layers
            "n_routed_experts": moe.num_routed_experts,
            "n_shared_experts": moe.shared_experts,
            "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": moe.expert_intermediate_size,
            "moe_layer_freq": 1,
            "topk_method": "greedy",
            "scoring_func": "softmax",
            "norm_topk_prob": moe.norm_topk_prob,
            "routed_scaling_factor": moe.routed_scaling_factor,
            "aux_loss_alpha": moe.aux_loss_alpha,
            "seq_aux": True,
        }
    return {**common, **specific, MOST_CONFIG_KEY: dataclasses.asdict(config)}


def _halves_to_interleaved(rope_dim: int) -> Tensor:
    """Row order that undoes `convert`'s interleaved -> rotate-half permutation."""
    return torch.argsort(_interleaved_to_halves(rope_dim))


def _mla_tensors(state: dict[str, Tensor], ours: str, hf: str, config: ModelConfig) -> dict[str, Tensor]:
    """One MLA layer, rope rows back in DeepSeek's interleaved order."""
    a = config.attention
    H, nope, rope, r = a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank
    perm = _halves_to_interleaved(rope)
    q_name = "q_proj" if a.q_lora_rank is None else "q_b_proj"
    q = state[f"{ours}.{q_name}.weight"]
    q = q.view(H, nope + rope, q.shape[-1])
    q = torch.cat([q[:, :nope], q[:, nope:][:, perm]], dim=1).reshape(H * (nope + rope), -1)
    kv_a = state[f"{ours}.kv_a_proj_with_mqa.weight"]
    out = {f"{hf}.{q_name}.weight": q, f"{hf}.kv_a_proj_with_mqa.weight": torch.cat([kv_a[:r], kv_a[r:][perm]])}
    names = ["kv_a_layernorm", "kv_b_proj", "o_proj"] + (["q_a_proj", "q_a_layernorm"] if a.q_lora_rank else [])
    out.update({f"{hf}.{n}.weight": state[f"{ours}.{n}.weight"] for n in names})
    return out


def _padded_mlp(state: dict[str, Tensor], ours: str, hf: str, width: int) -> dict[str, Tensor]:
    """A dense SwiGLU zero-padded to `width` units."""
    extra = width - state[f"{ours}.gate_proj.weight"].shape[0]
    rows = {n: torch.nn.functional.pad(state[f"{ours}.{n}.weight"], (0, 0, 0, extra)) for n in ("gate_proj", "up_proj")}
    down = torch.nn.functional.pad(state[f"{ours}.down_proj.weight"], (0, extra))
    return {**{f"{hf}.{n}.weight": w for n, w in rows.items()}, f"{hf}.down_proj.weight": down}


def _moe_tensors(state: dict[str, Tensor], ours: str, hf: str, config: ModelConfig) -> dict[str, Tensor]:
    """Router, routed experts one by one (nn.Linear (out, in) weights) and shared experts of one MoE layer."""
    h = config.moe.expert_intermediate_size
    out = {f"{hf}.gate.weight": state[f"{ours}.router.weight"]}
    gate_up, down = state[f"{ours}.experts.gate_up_proj"], state[f"{ours}.experts.down_proj"]  # (E, d, 2h), (E, h, d)
    for j in range(config.moe.num_routed_experts):
        out[f"{hf}.experts.{j}.gate_proj.weight"] = gate_up[j, :, :h].T
        out[f"{hf}.experts.{j}.up_proj.weight"] = gate_up[j, :, h:].T
        out[f"{hf}.experts.{j}.down_proj.weight"] = down[j].T
    if config.moe.shared_experts:
        out.update({f"{hf}.shared_experts.{n}.weight": state[f"{ours}.shared_experts.{n}.weight"]
                    for n in ("gate_proj", "up_proj", "down_proj")})
    return out


def hf_tensors(config: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """model.safetensors of the exported folder: the text model under transformers' names, audio parts under `most.`."""
    arch, V = hf_architecture(config), config.text_vocab_size
    embed = state["embed_tokens.weight"]
    out = {"model.embed_tokens.weight": embed[:V], AUDIO_UNIT_EMBEDDINGS: embed[V:], "model.norm.weight": state["norm.weight"]}
    if not config.tie_text_embeddings:
        out["lm_head.weight"] = state["text_head.weight"]
    out.update({AUDIO_PREFIX + k: v for k, v in state.items() if k.split(".")[0] in AUDIO_MODULES})
    width = dense_width(config)
    for i in range(config.num_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{hf}.{norm}.weight"] = state[f"{ours}.{norm}.weight"]
        if arch == DEEPSEEK_V2:
            out.update(_mla_tensors(state, f"{ours}.self_attn", f"{hf}.self_attn", config))
        else:
            out.update({f"{hf}.self_attn.{n}.weight": state[f"{ours}.self_attn.{n}.weight"]
                        for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        if config.is_moe_layer(i):
            out.update(_moe_tensors(state, f"{ours}.mlp", f"{hf}.mlp", config))
        else:
            out.update(_padded_mlp(state, f"{ours}.mlp", f"{hf}.mlp", width))
    return out


def transformers_caveats(config: ModelConfig) -> list[str]:
    """Why transformers' class would not reproduce this backbone's outputs (empty: it does, for text)."""
    moe_layers = any(config.is_moe_layer(i) for i in range(config.num_layers))
    caveats = []
    if moe_layers and config.moe.variant in ("mamoe", "noshared"):
        caveats.append(f"moe.variant={config.moe.variant}: transformers cannot run the modality mask (it routes every "
                       "token over all experts)")
    if moe_layers and config.moe.norm_topk_prob and config.moe.top_k > 1:
        caveats.append("moe.norm_topk_prob: transformers 5.24's DeepseekV2 router ignores it (DeepSeek's remote code "
                       "honours it)")
    return caveats


def export_backbone(config: ModelConfig, state: dict[str, Tensor], out_dir: str | Path,
                    dtype: torch.dtype | None = None) -> Path:
    """Write `state` (backbone keys) of `config` as config.json + model.safetensors in `out_dir`; returns the folder."""
    dtype = dtype or state["embed_tokens.weight"].dtype
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in hf_tensors(config, state).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> Path:
    """`python -m lightning_most export --ckpt X --out DIR [...]`."""
    parser = argparse.ArgumentParser(prog="python -m lightning_most export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a stage's Lightning .ckpt, or a backbone state dict (convert)")
    parser.add_argument("--out", required=True, help="folder to write config.json and model.safetensors into")
    parser.add_argument("--backbone", default=None, help="preset of a backbone state dict file (as convert printed)")
    parser.add_argument("--backbone_overrides", type=json.loads, default=None,
                        help="backbone_overrides of a state dict file, as JSON (as convert printed them)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: the checkpoint's")
    args = parser.parse_args(argv)
    try:
        config, state = load_backbone(args.ckpt, args.backbone, args.backbone_overrides)
        out = export_backbone(config, state, args.out, getattr(torch, args.dtype) if args.dtype else None)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out}: {hf_architecture(config)} layout, moe.variant={config.moe.variant}")
    for caveat in transformers_caveats(config):
        print(f"note: transformers will not give this model's outputs: {caveat}")
    return out

"""A trained text backbone saved in the Hugging Face layout that `convert` reads (the inverse of `convert.py`).

Two layouts, chosen by the backbone: grouped-query attention with dense MLPs -> `LlamaForCausalLM`;
multi-head latent attention (dense or vanilla MoE) -> `DeepseekV2ForCausalLM`. The tensors are loaded
into transformers' own model class (strictly: every name and shape must fit) and written with
`save_pretrained`, so what is saved is what transformers itself would write. Only the text part is
exported: the text rows of the embedding (`text_vocab_size`, special tokens included), the text head,
the decoder. The modality mask has no Hugging Face equivalent, so only the vanilla MoE (or dense)
exports. RoPE rows go back from rotate-half to DeepSeek-V2's interleaved order.

`ExportHuggingFace` is the callback that writes the folder when `fit` ends (conf/pretrain_text.yaml).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import ModelConfig
from lightning_most.convert import _interleaved_to_halves


def _rope(config: ModelConfig) -> dict:
    if config.attention.rope_scaling is not None:
        raise ValueError("exporting RoPE scaling is not supported: export a backbone with attention.rope_scaling=None")
    return {"rope_theta": config.attention.rope_theta, "rope_type": "default"}


def hf_config(config: ModelConfig):
    """transformers' config (Llama or DeepSeek-V2) of the text part of `config`."""
    import transformers

    moe_layers = [i for i in range(config.num_layers) if config.is_moe_layer(i)]
    if moe_layers and config.moe.variant != "vanilla":
        raise ValueError(f"moe.variant={config.moe.variant!r} has no Hugging Face layout: export the vanilla MoE (or dense)")
    if any(i >= config.first_k_dense and not config.is_moe_layer(i) for i in range(config.num_layers)):
        raise ValueError("the dense ablation's MLP width differs per layer: export with first_k_dense = num_layers")
    a = config.attention
    common = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers, "vocab_size": config.text_vocab_size,
              "intermediate_size": config.intermediate_size, "rms_norm_eps": config.rms_norm_eps,
              "max_position_embeddings": config.max_position, "tie_word_embeddings": config.tie_text_embeddings,
              "num_attention_heads": a.num_heads, "rope_parameters": _rope(config),
              "initializer_range": config.initializer_range}
    if a.kind == "gqa":
        if moe_layers:
            raise ValueError("grouped-query attention with MoE layers has no supported layout: use mla (DeepSeek-V2) or a dense model")
        return transformers.LlamaConfig(**common, num_key_value_heads=a.num_kv_heads, head_dim=a.head_dim,
                                        architectures=["LlamaForCausalLM"])
    if config.rms_norm_eps != 1e-6:
        raise ValueError("DeepSeek-V2's latent norms use eps 1e-6: export a backbone with rms_norm_eps=1e-6")
    moe = config.moe
    return transformers.DeepseekV2Config(
        **common, num_key_value_heads=a.num_heads, q_lora_rank=a.q_lora_rank, kv_lora_rank=a.kv_lora_rank,
        qk_nope_head_dim=a.qk_nope_head_dim, qk_rope_head_dim=a.qk_rope_head_dim, v_head_dim=a.v_head_dim,
        n_routed_experts=moe.num_routed_experts if moe_layers else None, n_shared_experts=moe.num_shared_experts,
        num_experts_per_tok=moe.top_k, moe_intermediate_size=moe.expert_intermediate_size,
        first_k_dense_replace=min(config.first_k_dense, config.num_layers), routed_scaling_factor=moe.routed_scaling_factor,
        aux_loss_alpha=moe.aux_loss_alpha, topk_method="greedy", norm_topk_prob=False,
        architectures=["DeepseekV2ForCausalLM"],
    )


def hf_state_dict(backbone: MoSTBackbone) -> dict[str, Tensor]:
    """The backbone's text weights under transformers' in-memory names (experts fused, as transformers holds them)."""
    config, state = backbone.config, backbone.state_dict()
    V, out = config.text_vocab_size, {}
    out["model.embed_tokens.weight"] = state["embed_tokens.weight"][:V]
    out["model.norm.weight"] = state["norm.weight"]
    if not config.tie_text_embeddings:
        out["lm_head.weight"] = state["text_head.weight"]
    for i in range(config.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        for key, value in state.items():
            if not key.startswith(ours):
                continue
            name = key.removeprefix(ours)
            if name == "mlp.router.weight":
                out[hf + "mlp.gate.weight"] = value
            elif name == "mlp.experts.gate_up_proj":  # ours (E, d, 2h) -> (E, 2h, d)
                out[hf + "mlp.experts.gate_up_proj"] = value.transpose(1, 2)
            elif name == "mlp.experts.down_proj":  # ours (E, h, d) -> (E, d, h)
                out[hf + "mlp.experts.down_proj"] = value.transpose(1, 2)
            else:
                out[hf + name] = value
        if config.attention.kind == "mla":
            _rope_rows_to_interleaved(out, hf + "self_attn.", config)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _rope_rows_to_interleaved(out: dict[str, Tensor], prefix: str, config: ModelConfig) -> None:
    """Undo convert's interleaved -> rotate-half permutation of the rope rows of q and kv_a."""
    a = config.attention
    inverse = torch.argsort(_interleaved_to_halves(a.qk_rope_head_dim))
    nope, rope, r = a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank
    q_name = prefix + ("q_proj.weight" if a.q_lora_rank is None else "q_b_proj.weight")
    q = out[q_name].view(a.num_heads, nope + rope, -1)
    out[q_name] = torch.cat([q[:, :nope], q[:, nope:][:, inverse]], dim=1).reshape(a.num_heads * (nope + rope), -1)
    kv_a = out[prefix + "kv_a_proj_with_mqa.weight"]
    out[prefix + "kv_a_proj_with_mqa.weight"] = torch.cat([kv_a[:r], kv_a[r:][inverse]])


def export_hf(backbone: MoSTBackbone, out_dir: str | Path) -> Path:
    """Save the backbone's text model with transformers' `save_pretrained` into `out_dir` (config.json + safetensors)."""
    import transformers

    config = hf_config(backbone.config)
    model_class = transformers.LlamaForCausalLM if config.model_type == "llama" else transformers.DeepseekV2ForCausalLM
    model = model_class(config)
    model.load_state_dict(hf_state_dict(backbone), strict=True)
    out = Path(out_dir)
    model.save_pretrained(out)
    return out


class ExportHuggingFace(pl.Callback):
    """When fit ends, write the trained backbone's text model in the Hugging Face layout to `out_dir`
    (default: `<trainer.default_root_dir>/hf`)."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            out = export_hf(pl_module.backbone, self.out_dir or Path(trainer.default_root_dir) / "hf")
            print(f"Hugging Face checkpoint: {out} (convert it with `python -m lightning_most convert --src {out}`)")

"""Pretrained text LMs as MoST backbones: a local Hugging Face checkpoint folder -> a backbone state dict.

The idea of torchtitan's `state_dict_adapter.py`: the backbone keeps its own layout, and this module
maps a checkpoint format onto it. Supported folders (config.json + `model.safetensors` or
`model.safetensors.index.json` with its shards; pickled `*.bin` files are never opened):

- DeepSeek-V2 / V2-Lite (`DeepseekV2ForCausalLM`), with routed experts either fused as transformers
  holds them in memory (`mlp.experts.gate_up_proj` (E, 2h, d), `mlp.experts.down_proj` (E, d, h)) or
  per expert as the released files store them (`mlp.experts.{j}.gate_proj|up_proj|down_proj.weight`).
- Llama-3.x (`LlamaForCausalLM`): grouped-query attention, tied embeddings, a dense MLP in every layer.
- Either of those written by `export` (`export.py`, the way back): config.json then also holds the backbone's
  own config (`most_config`) and model.safetensors its audio parts (`most.*`), so the backbone comes back
  exactly, audio parts included.

What the conversion does:

1. `config_from_hf` reads config.json into a `ModelConfig`, refusing every field whose semantics the
   backbone does not implement (group-limited routing, sigmoid scoring, other RoPE scalings, biases,
   ...) instead of converting it into a different model.
2. Text embedding rows go to the first rows of `embed_tokens`; `lm_head` to the first rows of
   `text_head`. Rows past the checkpoint's vocabulary (special tokens, audio units), `audio_head` and
   `audio_projector` keep a fresh initialisation (seeded).
3. Experts are transposed to the backbone's row-vector layout: gate_up (E, d, 2h) gate first, down (E, h, d);
   the router `mlp.gate.weight` becomes `mlp.router.weight`.
4. DeepSeek-V2 rotates interleaved pairs (x[2i], x[2i+1]); the backbone rotates halves (x[i], x[i+D/2]).
   The rope rows of q_proj / q_b_proj and kv_a_proj_with_mqa are permuted so the two agree exactly
   (q.k is unchanged by permuting both), as the original DeepSeek code does at run time.

`convert_hf_checkpoint` writes the result with `torch.save` (tensors only, plain backbone keys), which
`init_from` of a stage loads. Command line: `python -m lightning_most convert --src DIR --out FILE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from lightning_most.config import (
    PLAIN_ROPE,
    PRESETS,
    AttentionConfig,
    ModelConfig,
    MoEConfig,
    MoEVariant,
    config_from_dict,
)
from lightning_most.tokenizer import SPECIAL_TOKENS

DEEPSEEK_V2 = "DeepseekV2ForCausalLM"
LLAMA = "LlamaForCausalLM"
ARCHITECTURES = {DEEPSEEK_V2: "deepseek_v2", LLAMA: "llama"}
"""Supported `architectures` of config.json and their `model_type`."""

_IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")  # recomputed buffers some old checkpoints saved

# What `export` adds to a Hugging Face folder, and this module reads back:
MOST_CONFIG_KEY = "most_config"
"""config.json key holding the backbone's whole `ModelConfig` (dataclasses.asdict)."""
AUDIO_PREFIX = "most."
"""Prefix of the audio parts' tensors in model.safetensors (transformers leaves them unused)."""
AUDIO_MODULES = ("audio_projector", "audio_encoder", "ctc_head", "audio_head")
"""Backbone modules stored under AUDIO_PREFIX + their state-dict key."""
AUDIO_UNIT_EMBEDDINGS = AUDIO_PREFIX + "embed_audio_units.weight"
"""The audio-unit rows of `embed_tokens` (num_audio_units, d); the text rows are model.embed_tokens.weight."""


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be converted: the message names the file, field or tensor."""


# ---- config.json -> ModelConfig ------------------------------------------------------------------
def read_hf_config(src_dir: str | Path) -> dict[str, Any]:
    """The parsed config.json of a local Hugging Face checkpoint folder."""
    src = Path(src_dir)
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such checkpoint folder")
    file = src / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{src} has no config.json: give the folder that save_pretrained wrote")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err


def architecture(hf: dict[str, Any], where: str = "config.json") -> str:
    """The supported architecture that config.json names (its `architectures`, else its `model_type`)."""
    names = hf.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name
    by_type = {t: a for a, t in ARCHITECTURES.items()}
    if not names and hf.get("model_type") in by_type:
        return by_type[hf["model_type"]]
    raise CheckpointError(
        f"{where}: architecture {names or hf.get('model_type')!r} is not supported; "
        f"convertible: {sorted(ARCHITECTURES)}"
    )


def _require(hf: dict[str, Any], where: str, field: str, allowed: Any, why: str) -> None:
    value = hf.get(field, allowed[0])
    if value not in allowed:
        raise CheckpointError(f"{where}: {field}={value!r} is not supported ({why}); supported: {allowed}")


def _rope(hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and the backbone's `rope_scaling` from `rope_parameters` (transformers 5) or `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.pop("rope_type", None) or params.pop("type", "default")
    params.pop("type", None)
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor != 1 is not supported (RoPE on the whole head)")
    if kind == "default":
        return theta, None
    if kind not in ("yarn", "llama3"):
        raise CheckpointError(
            f"{where}: rope type {kind!r} is not supported; the backbone implements default, yarn and llama3 RoPE"
        )
    scaling = {"rope_type": kind, **params}
    if kind == "yarn" and scaling.get("factor") is None:
        raise CheckpointError(f"{where}: yarn rope scaling needs an explicit `factor`")
    try:
        AttentionConfig(rope_scaling=scaling)
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from err
    return theta, scaling


def _dense_moe() -> MoEConfig:
    """MoE settings of a model without MoE layers (as the llama-3.2-3b preset)."""
    return MoEConfig(variant="dense", num_routed_experts=2, num_shared_experts=0, top_k=1)


def _deepseek_v2_config(hf: dict[str, Any], where: str) -> tuple[AttentionConfig, MoEConfig, int]:
    _require(hf, where, "hidden_act", ["silu"], "experts and MLPs are SwiGLU")
    _require(hf, where, "attention_bias", [False], "projections have no bias")
    _require(hf, where, "mlp_bias", [False], "projections have no bias")
    _require(hf, where, "scoring_func", ["softmax"], "the router is a softmax gate")
    _require(hf, where, "moe_layer_freq", [1], "every layer after first_k_dense_replace is MoE")
    method = hf.get("topk_method", "greedy")
    n_group, topk_group = hf.get("n_group"), hf.get("topk_group")
    all_groups = n_group in (None, 1) or topk_group == n_group  # group-limited over all groups = greedy
    if method not in ("greedy", "group_limited_greedy") or (method == "group_limited_greedy" and not all_groups):
        raise CheckpointError(
            f"{where}: topk_method={method!r} with n_group={n_group}, topk_group={topk_group} is not supported; "
            "the router picks a greedy top-k over all experts"
        )
    heads = hf["num_attention_heads"]
    if hf.get("num_key_value_heads", heads) != heads:
        raise CheckpointError(f"{where}: num_key_value_heads must equal num_attention_heads for MLA")
    theta, scaling = _rope(hf, where)
    attention = AttentionConfig(
        kind="mla",
        num_heads=heads,
        q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"],
        rope_theta=theta,
        rope_scaling=scaling,
    )
    experts = hf.get("n_routed_experts")
    if not experts:
        return attention, _dense_moe(), hf["num_hidden_layers"]
    moe = MoEConfig(
        num_routed_experts=experts,
        num_shared_experts=hf.get("n_shared_experts") or 0,
        top_k=hf["num_experts_per_tok"],
        expert_intermediate_size=hf["moe_intermediate_size"],
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(hf.get("norm_topk_prob") or False),
        aux_loss_alpha=float(hf.get("aux_loss_alpha", MoEConfig.aux_loss_alpha)),
    )
    return attention, moe, hf.get("first_k_dense_replace", 0)


def _llama_config(hf: dict[str, Any], where: str) -> tuple[AttentionConfig, MoEConfig, int]:
    _require(hf, where, "hidden_act", ["silu"], "MLPs are SwiGLU")
    _require(hf, where, "attention_bias", [False], "projections have no bias")
    _require(hf, where, "mlp_bias", [False], "projections have no bias")
    heads = hf["num_attention_heads"]
    theta, scaling = _rope(hf, where)
    attention = AttentionConfig(
        kind="gqa",
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=theta,
        rope_scaling=scaling,
    )
    return attention, _dense_moe(), hf["num_hidden_layers"]


def config_from_hf(
    path: str | Path,
    num_audio_units: int | None = None,
    audio_feature_dim: int | None = None,
    moe_variant: MoEVariant | None = None,
    text_vocab_size: int | None = None,
) -> ModelConfig:
    """The backbone config of a Hugging Face checkpoint folder (or its config.json), plus the audio parts.

    Args:
        path: checkpoint folder, or its config.json.
        num_audio_units: discrete audio units appended after the text ids (default 500).
        audio_feature_dim: width of one continuous audio frame (default 1024).
        moe_variant: MoE variant of the MoE layers (mamoe, vanilla, noshared; default mamoe); ignored for dense models.
        text_vocab_size: text ids of the backbone. Default: DeepSeek-V2's `vocab_size` (its 102400 rows
            leave room after its ~100k tokens for our special tokens); Llama's `vocab_size` plus our
            special tokens (its 128256 rows are exactly its tokenizer). New rows start freshly initialised.

    A folder written by `export` carries the backbone's own config (`most_config`): it is returned with only the
    arguments that are given (not None) changed, e.g. a text LM pretrained here given the audio shapes of the
    corpus it will be post-trained on (`hf_state_dict` then starts the audio parts whose shape changed afresh).
    """
    file = Path(path)
    hf = read_hf_config(file.parent if file.name == "config.json" else file)
    where = str(file if file.name == "config.json" else file / "config.json")
    arch = architecture(hf, where)
    if MOST_CONFIG_KEY in hf:
        try:
            config = config_from_dict(hf[MOST_CONFIG_KEY])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: {MOST_CONFIG_KEY} is not a backbone config: {err}") from err
        return _with_requested(config, num_audio_units, audio_feature_dim, moe_variant, text_vocab_size)
    num_audio_units = 500 if num_audio_units is None else num_audio_units
    audio_feature_dim = 1024 if audio_feature_dim is None else audio_feature_dim
    moe_variant = moe_variant or "mamoe"
    attention, moe, first_k_dense = (_deepseek_v2_config if arch == DEEPSEEK_V2 else _llama_config)(hf, where)
    if moe.variant != "dense":
        moe = dataclasses.replace(moe, variant=moe_variant)
    vocab = hf["vocab_size"]
    if text_vocab_size is None and arch != DEEPSEEK_V2:
        text_vocab_size = vocab + len(SPECIAL_TOKENS)
    if text_vocab_size is not None and text_vocab_size < vocab:
        raise CheckpointError(
            f"{where}: vocab_size={vocab} does not fit text_vocab_size={text_vocab_size}; give at least {vocab}"
        )
    try:
        return ModelConfig(
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            first_k_dense=first_k_dense,
            intermediate_size=hf["intermediate_size"],
            text_vocab_size=text_vocab_size or vocab,
            num_audio_units=num_audio_units,
            audio_feature_dim=audio_feature_dim,
            max_position=hf.get("max_position_embeddings", 4096),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            tie_text_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention=attention,
            moe=moe,
        )
    except KeyError as err:
        raise CheckpointError(f"{where} lacks the field {err}") from err


# ---- safetensors -> backbone state dict --------------------------------------------------------
class SafetensorsCheckpoint:
    """The tensors of a checkpoint folder by name, read lazily from `model.safetensors` or its sharded index."""

    def __init__(self, src_dir: str | Path) -> None:
        src = Path(src_dir)
        index = src / "model.safetensors.index.json"
        single = src / "model.safetensors"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not weight_map:
                raise CheckpointError(f"{index} has no weight_map")
            self.files = {name: src / shard for name, shard in weight_map.items()}
        elif single.is_file():
            with safe_open(single, "pt") as f:
                self.files = dict.fromkeys(f.keys(), single)
        else:
            found = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
            raise CheckpointError(
                f"{src} has neither model.safetensors nor model.safetensors.index.json "
                f"(found {found or 'no weights'}); "
                "pickled checkpoints are not read: re-save with save_pretrained(safe_serialization=True)"
            )
        for shard in sorted(set(self.files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{index}: shard {shard.name} is missing from {src}")
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        """Stored shape of tensor `name` (read from the header; the tensor is not loaded)."""
        if name not in self.files:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint ({self._where()})")
        with safe_open(self.files[name], "pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
        """Tensor `name`, checked against `shape` when given."""
        if name not in self.files:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint ({self._where()})")
        with safe_open(self.files[name], "pt") as f:
            tensor = f.get_tensor(name)
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name} in {self.files[name].name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(shape)}"
            )
        self.used.add(name)
        return tensor

    def unused(self) -> list[str]:
        """Names never read (minus recomputed buffers)."""
        return sorted(n for n in self.files if n not in self.used and not _IGNORED_TENSORS.match(n))

    def _where(self) -> str:
        return ", ".join(sorted({p.name for p in self.files.values()}))


def _with_requested(
    config: ModelConfig, num_audio_units: int | None, audio_feature_dim: int | None,
    moe_variant: MoEVariant | None, text_vocab_size: int | None,
) -> ModelConfig:
    """An exported backbone's config with the given (not None) audio shapes, MoE variant and text vocabulary."""
    changes: dict[str, Any] = {
        name: value for name, value in (("num_audio_units", num_audio_units), ("audio_feature_dim", audio_feature_dim),
                                        ("text_vocab_size", text_vocab_size)) if value is not None
    }
    if moe_variant is not None and config.moe.variant != "dense":
        changes["moe"] = dataclasses.replace(config.moe, variant=moe_variant)
    return dataclasses.replace(config, **changes)


def _interleaved_to_halves(rope_dim: int) -> Tensor:
    """Row order that turns interleaved rotary pairs (2i, 2i+1) into rotate-half pairs (i, i + D/2)."""
    return torch.cat([torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)])


def _deepseek_attention(ckpt: SafetensorsCheckpoint, hf: str, config: ModelConfig) -> dict[str, Tensor]:
    """One MLA layer, with the rope rows permuted from interleaved to rotate-half order."""
    a, d = config.attention, config.hidden_size
    H, nope, rope, r = a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank
    perm = _interleaved_to_halves(rope)
    out = {}
    q_in = d if a.q_lora_rank is None else a.q_lora_rank
    q_name = "q_proj" if a.q_lora_rank is None else "q_b_proj"
    q = ckpt.get(f"{hf}.{q_name}.weight", (H * (nope + rope), q_in)).view(H, nope + rope, q_in)
    q = torch.cat([q[:, :nope], q[:, nope:][:, perm]], dim=1)
    out[f"{q_name}.weight"] = q.reshape(H * (nope + rope), q_in)
    if a.q_lora_rank is not None:
        out["q_a_proj.weight"] = ckpt.get(f"{hf}.q_a_proj.weight", (a.q_lora_rank, d))
        out["q_a_layernorm.weight"] = ckpt.get(f"{hf}.q_a_layernorm.weight", (a.q_lora_rank,))
    kv_a = ckpt.get(f"{hf}.kv_a_proj_with_mqa.weight", (r + rope, d))
    out["kv_a_proj_with_mqa.weight"] = torch.cat([kv_a[:r], kv_a[r:][perm]])
    out["kv_a_layernorm.weight"] = ckpt.get(f"{hf}.kv_a_layernorm.weight", (r,))
    out["kv_b_proj.weight"] = ckpt.get(f"{hf}.kv_b_proj.weight", (H * (nope + a.v_head_dim), r))
    out["o_proj.weight"] = ckpt.get(f"{hf}.o_proj.weight", (d, H * a.v_head_dim))
    return out


def _llama_attention(ckpt: SafetensorsCheckpoint, hf: str, config: ModelConfig) -> dict[str, Tensor]:
    """One GQA layer: the names and the rotate-half convention already match."""
    a, d = config.attention, config.hidden_size
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    shapes = {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q)}
    return {f"{n}.weight": ckpt.get(f"{hf}.{n}.weight", s) for n, s in shapes.items()}


def _swiglu(ckpt: SafetensorsCheckpoint, hf: str, d: int, h: int) -> dict[str, Tensor]:
    shapes = {"gate_proj": (h, d), "up_proj": (h, d), "down_proj": (d, h)}
    return {f"{n}.weight": ckpt.get(f"{hf}.{n}.weight", s) for n, s in shapes.items()}


def _routed_experts(ckpt: SafetensorsCheckpoint, hf: str, config: ModelConfig) -> dict[str, Tensor]:
    """Routed experts as (E, d, 2h) gate-then-up and (E, h, d), from the fused or the per-expert layout."""
    E, d, h = config.moe.num_routed_experts, config.hidden_size, config.moe.expert_intermediate_size
    if f"{hf}.gate_up_proj" in ckpt:  # transformers in memory: (E, 2h, d) gate first, (E, d, h)
        gate_up = ckpt.get(f"{hf}.gate_up_proj", (E, 2 * h, d)).transpose(1, 2)
        down = ckpt.get(f"{hf}.down_proj", (E, d, h)).transpose(1, 2)
    else:  # files on disk / remote code: nn.Linear weights per expert
        gate_up = torch.stack([
            torch.cat([ckpt.get(f"{hf}.{j}.gate_proj.weight", (h, d)), ckpt.get(f"{hf}.{j}.up_proj.weight", (h, d))]).T
            for j in range(E)
        ])
        down = torch.stack([ckpt.get(f"{hf}.{j}.down_proj.weight", (d, h)).T for j in range(E)])
    return {"gate_up_proj": gate_up.contiguous(), "down_proj": down.contiguous()}


def _dense_mlp(ckpt: SafetensorsCheckpoint, hf: str, d: int, width: int, stored_width: int) -> dict[str, Tensor]:
    """A dense SwiGLU of `width` units stored `stored_width` wide (`export` zero-pads narrower layers)."""
    mlp = _swiglu(ckpt, hf, d, stored_width)
    if stored_width == width:
        return mlp
    padding = [mlp["gate_proj.weight"][width:], mlp["up_proj.weight"][width:], mlp["down_proj.weight"][:, width:]]
    if any(bool(p.any()) for p in padding):
        raise CheckpointError(
            f"{hf}: units past the layer's width {width} (zero padding up to intermediate_size={stored_width}, "
            "written by export) are not zero: the folder's model is no longer the exported one"
        )
    return {"gate_proj.weight": mlp["gate_proj.weight"][:width], "up_proj.weight": mlp["up_proj.weight"][:width],
            "down_proj.weight": mlp["down_proj.weight"][:, :width]}


def _layer(ckpt: SafetensorsCheckpoint, arch: str, config: ModelConfig, i: int, hf_config: dict[str, Any]) -> dict[str, Tensor]:
    """Backbone tensors of decoder layer i (keys relative to `layers.{i}.`); `hf_config` is the folder's config.json."""
    hf, d = f"model.layers.{i}", config.hidden_size
    out = {
        "input_layernorm.weight": ckpt.get(f"{hf}.input_layernorm.weight", (d,)),
        "post_attention_layernorm.weight": ckpt.get(f"{hf}.post_attention_layernorm.weight", (d,)),
    }
    attention = _deepseek_attention if arch == DEEPSEEK_V2 else _llama_attention
    out.update({f"self_attn.{k}": v for k, v in attention(ckpt, f"{hf}.self_attn", config).items()})
    if not config.is_moe_layer(i):
        mlp = _dense_mlp(ckpt, f"{hf}.mlp", d, config.dense_mlp_width(i), hf_config["intermediate_size"])
        out.update({f"mlp.{k}": v for k, v in mlp.items()})
        return out
    moe = config.moe
    out["mlp.router.weight"] = ckpt.get(f"{hf}.mlp.gate.weight", (moe.num_routed_experts, d))
    out.update({f"mlp.experts.{k}": v for k, v in _routed_experts(ckpt, f"{hf}.mlp.experts", config).items()})
    if stored_shared := hf_config.get("n_shared_experts") or 0:  # none in a noshared export
        shared = _swiglu(ckpt, f"{hf}.mlp.shared_experts", d, stored_shared * moe.expert_intermediate_size)
        if moe.shared_experts:  # the noshared variant drops them
            out.update({f"mlp.shared_experts.{k}": v for k, v in shared.items()})
    return out


def _audio_parts(ckpt: SafetensorsCheckpoint, fresh: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """The audio parts an exported folder stores under `most.` names, in place of the fresh ones; a stored part
    whose shape differs from the config's (other audio shapes were asked for) stays fresh, with a warning."""
    wanted = {AUDIO_UNIT_EMBEDDINGS: (config.num_audio_units, config.hidden_size)}
    wanted |= {AUDIO_PREFIX + key: tuple(t.shape) for key, t in fresh.items() if key.split(".")[0] in AUDIO_MODULES}
    stored = {name: ckpt.shape(name) for name in wanted}
    refreshed = [name for name, shape in wanted.items() if stored[name] != shape]
    if refreshed:
        ckpt.used.update(refreshed)
        warnings.warn(
            f"{len(refreshed)} audio parts of the export have other shapes than asked for and start afresh: "
            + ", ".join(f"{n} {stored[n]} -> {wanted[n]}" for n in refreshed),
            stacklevel=3,
        )
    parts = {}
    if AUDIO_UNIT_EMBEDDINGS not in refreshed:
        embed = fresh["embed_tokens.weight"].clone()
        embed[config.text_vocab_size:] = ckpt.get(AUDIO_UNIT_EMBEDDINGS, wanted[AUDIO_UNIT_EMBEDDINGS])
        parts["embed_tokens.weight"] = embed
    for key in fresh:
        name = AUDIO_PREFIX + key
        if name in wanted and name not in refreshed:
            parts[key] = ckpt.get(name, wanted[name])
    return parts


def _fresh_outer_weights(config: ModelConfig, seed: int) -> dict[str, Tensor]:
    """Embedding, heads, projector and final norm of a freshly initialised backbone (seeded)."""
    from lightning_most.backbone import MoSTBackbone

    shell = dataclasses.replace(config, num_layers=1, first_k_dense=1, intermediate_size=1,
                                moe=dataclasses.replace(config.moe, layer_expert_groups=None))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MoSTBackbone(shell)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("layers.")}


def hf_state_dict(
    src_dir: str | Path, config: ModelConfig, dtype: torch.dtype | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """The backbone state dict (plain keys) of checkpoint folder `src_dir` for `config` (from `config_from_hf`).

    Args:
        src_dir: Hugging Face checkpoint folder.
        config: backbone config; its text_vocab_size must hold the checkpoint's vocabulary.
        dtype: dtype of every tensor; default the checkpoint's embedding dtype.
        seed: seed of the freshly initialised parts (audio rows, audio head and projector).
    """
    src = Path(src_dir)
    hf_config = read_hf_config(src)
    arch = architecture(hf_config, str(src / "config.json"))
    ckpt = SafetensorsCheckpoint(src)
    d, V = config.hidden_size, config.text_vocab_size
    embed = ckpt.get("model.embed_tokens.weight")
    if embed.ndim != 2 or embed.shape[1] != d:
        raise CheckpointError(f"tensor model.embed_tokens.weight has shape {tuple(embed.shape)}, expected (vocab, {d})")
    vocab = embed.shape[0]
    if vocab > V:
        raise CheckpointError(
            f"model.embed_tokens.weight has {vocab} text rows but config.text_vocab_size is {V}: "
            f"give text_vocab_size >= {vocab}"
        )
    dtype = dtype or embed.dtype
    state = _fresh_outer_weights(config, seed)
    state["embed_tokens.weight"][:vocab] = embed
    state["norm.weight"] = ckpt.get("model.norm.weight", (d,))
    if config.tie_text_embeddings:
        ckpt.used.add("lm_head.weight")  # tied: a stored copy equals the embedding
    else:
        state["text_head.weight"][:vocab] = ckpt.get("lm_head.weight", (vocab, d))
    if MOST_CONFIG_KEY in hf_config:  # a folder written by export: its audio parts too
        state.update(_audio_parts(ckpt, state, config))
    for i in range(config.num_layers):
        state.update({f"layers.{i}.{k}": v for k, v in _layer(ckpt, arch, config, i, hf_config).items()})
    if (unused := ckpt.unused()):
        raise CheckpointError(
            f"{src}: {len(unused)} tensors have no place in the backbone (config.json and the weights disagree?): "
            f"{unused[:5]}{'...' if len(unused) > 5 else ''}"
        )
    return {k: v.to(dtype).contiguous() for k, v in state.items()}


def convert_hf_checkpoint(
    src_dir: str | Path,
    out_file: str | Path,
    num_audio_units: int | None = None,
    audio_feature_dim: int | None = None,
    moe_variant: MoEVariant | None = None,
    text_vocab_size: int | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> Path:
    """Convert a Hugging Face checkpoint folder into a backbone state dict file that `init_from` loads.

    Args:
        src_dir: folder with config.json and safetensors weights.
        out_file: where to write the state dict (torch.save of plain-keyed tensors).
        num_audio_units: discrete audio units of the backbone (`config_from_hf`: None = the export's, or 500).
        audio_feature_dim: width of one continuous audio frame (None = the export's, or 1024).
        moe_variant: MoE variant of the MoE layers (None = the export's, or mamoe).
        text_vocab_size: text ids of the backbone; default the checkpoint's vocab_size.
        dtype: dtype of the written tensors; default the checkpoint's.
        seed: seed of the freshly initialised audio parts.

    Returns:
        The path written. The whole state dict is held in memory once (DeepSeek-V2-Lite: ~32 GB in bf16).
    """
    config = config_from_hf(src_dir, num_audio_units, audio_feature_dim, moe_variant, text_vocab_size)
    state = hf_state_dict(src_dir, config, dtype, seed)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def preset_overrides(config: ModelConfig) -> tuple[str, dict[str, Any]]:
    """The preset closest to `config` and the `backbone_overrides` that turn it into `config`."""

    def diff(base: dict, target: dict) -> dict:
        out = {}
        for key, value in target.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "rope_scaling":
                if sub := diff(base[key], value):
                    out[key] = sub
            elif base.get(key) != value:
                # A null override keeps the preset's value: turning a preset's RoPE scaling off needs it said.
                out[key] = dict(PLAIN_ROPE) if key == "rope_scaling" and value is None else value
        return out

    target = dataclasses.asdict(config)
    diffs = {name: diff(dataclasses.asdict(p), target) for name, p in PRESETS.items()}
    name = min(diffs, key=lambda n: len(json.dumps(diffs[n])))
    return name, diffs[name]


def main(argv: list[str] | None = None) -> Path:
    """`python -m lightning_most convert --src DIR --out FILE [...]`."""
    parser = argparse.ArgumentParser(prog="python -m lightning_most convert", description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="Hugging Face checkpoint folder (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="state dict file to write (for model.init_args.init_from)")
    parser.add_argument("--num-audio-units", type=int, default=None, help="default: an export's, else 500")
    parser.add_argument("--audio-feature-dim", type=int, default=None, help="default: an export's, else 1024")
    parser.add_argument("--moe-variant", default=None, choices=["mamoe", "vanilla", "noshared"],
                        help="default: an export's, else mamoe")
    parser.add_argument("--text-vocab-size", type=int, default=None, help="default: the checkpoint's vocab_size")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: the checkpoint's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised audio parts")
    args = parser.parse_args(argv)
    out = convert_hf_checkpoint(
        args.src, args.out, args.num_audio_units, args.audio_feature_dim, args.moe_variant, args.text_vocab_size,
        getattr(torch, args.dtype) if args.dtype else None, args.seed,
    )
    config = config_from_hf(
        args.src, args.num_audio_units, args.audio_feature_dim, args.moe_variant, args.text_vocab_size
    )
    preset, overrides = preset_overrides(config)
    print(f"wrote {out}")
    if MOST_CONFIG_KEY in read_hf_config(args.src):
        given = [f"--{n.replace('_', '-')}" for n in ("num_audio_units", "audio_feature_dim", "moe_variant",
                                                            "text_vocab_size") if getattr(args, n) is not None]
        print(f"{args.src} was written by export: its own config and audio parts were used"
              + (f", except for {', '.join(given)}" if given else ""))
    print(f"train with: --model.init_args.backbone {preset} --model.init_args.init_from {out}")
    if overrides:
        print(f"and model.init_args.backbone_overrides: {json.dumps(overrides)}")
    return out

"""Architecture configuration of the backbone: dataclasses, named presets, and typed overrides.

A run picks a preset by name and overrides any field from YAML or the command line:

    model:
      init_args:
        backbone: deepseek-v2-lite
        backbone_overrides:
          num_layers: 4
          moe: {variant: vanilla}

`backbone_overrides` is a `ModelOverrides`: the same fields as `ModelConfig`, all optional, so
jsonargparse type-checks every key and repeated `--config` files merge field by field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_most.partitions import check_groups, index_partition

MoEVariant = Literal["mamoe", "vanilla", "noshared", "dense"]
GateKind = Literal["masked_softmax", "group_renormalized"]
Partition = Literal["halves", "ratio", "interleaved"]
AttentionKind = Literal["mla", "gqa"]
PLAIN_ROPE: dict[str, Any] = {"rope_type": "default"}
"""`attention.rope_scaling` of plain RoPE given explicitly (transformers' name for it); see `AttentionConfig`."""


@dataclass
class MoEConfig:
    """Mixture-of-experts settings of the MoE layers (layers at index >= `first_k_dense`)."""

    variant: MoEVariant = "mamoe"
    """mamoe: modality-masked routing (MoST); vanilla: no mask; noshared: mamoe without shared experts;
    dense: a plain MLP with the active parameter count of (top_k + shared) experts."""
    num_routed_experts: int = 16
    """Routed experts per MoE layer."""
    num_shared_experts: int = 1
    """Always-on shared experts (0 = none, as in NoShared)."""
    top_k: int = 2
    """Experts each token is routed to, inside its modality's group. It may exceed a group's size, as the official
    MoST release allows: the slots past the group go to off-group experts at weight 0 (they add compute and count in
    the aux loss's expert frequencies, nothing else)."""
    expert_intermediate_size: int = 64
    """Hidden width of one expert's SwiGLU MLP."""
    num_modalities: int = 2
    """Number of modality ids (0 = text, 1 = audio, more can be added)."""
    expert_groups: list[list[int]] | None = None
    """Routed-expert indices allowed for each modality id; None derives them from `partition`."""
    partition: Partition = "halves"
    """How groups are derived when `expert_groups` is None (`partitions.py`): halves (M equal contiguous blocks),
    ratio (contiguous blocks sized by `partition_ratio`), interleaved (expert e -> modality e % M)."""
    partition_ratio: list[float] | None = None
    """Relative group sizes for partition=ratio, one per modality, e.g. [3, 1] = 3/4 of the experts for text."""
    layer_expert_groups: list[list[list[int]]] | None = None
    """Groups per MoE layer (in layer order), e.g. from `python -m lightning_most partition` (clustering of
    pretrained routing); overrides expert_groups / partition layer by layer."""
    gate: GateKind = "masked_softmax"
    """masked_softmax: softmax over all experts, then masked to the group, not renormalised (the official
    MoST release); group_renormalized: softmax over the group's experts only (weights sum to 1)."""
    norm_topk_prob: bool = False
    """DeepSeek-V2's `norm_topk_prob`: with top_k > 1 the chosen top-k weights are divided by their sum (inside the
    modality group, so a token's routed weights sum to 1), and `routed_scaling_factor` is then not applied
    (DeepSeek-V2's MoEGate; the official MoST release's MAMoEGate does the same on its masked scores)."""
    aux_loss_alpha: float = 0.001
    """Weight of the sequence-level load-balancing loss (DeepSeek-V2); 0 disables it."""
    routed_scaling_factor: float = 1.0
    """Multiplier on the routed output (DeepSeek-V2 uses 1.0 for Lite); not applied with `norm_topk_prob`."""

    def __post_init__(self) -> None:
        if self.num_routed_experts < 1:
            raise ValueError(f"moe.num_routed_experts must be >= 1, got {self.num_routed_experts}")
        if self.num_shared_experts < 0:
            raise ValueError(f"moe.num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.num_modalities < 1:
            raise ValueError(f"moe.num_modalities must be >= 1, got {self.num_modalities}")
        E, M = self.num_routed_experts, self.num_modalities
        if self.expert_groups is not None:
            check_groups(self.expert_groups, E, M, "moe.expert_groups")
        for i, groups in enumerate(self.layer_expert_groups or []):
            check_groups(groups, E, M, f"moe.layer_expert_groups[{i}]")
        if not 1 <= self.top_k <= E:
            raise ValueError(
                f"moe.top_k={self.top_k} must be between 1 and moe.num_routed_experts={self.num_routed_experts}"
            )
        if self.variant != "vanilla":  # groups() refuses more modalities than experts when it derives them
            named = {"moe.expert_groups": self.groups(), **{
                f"moe.layer_expert_groups[{i}]": groups for i, groups in enumerate(self.layer_expert_groups or [])}}
            for where, groups in named.items():
                if empty := [m for m, group in enumerate(groups) if not group]:
                    raise ValueError(f"{where} leaves modalities {empty} without experts: give each at least one")

    @property
    def shared_experts(self) -> int:
        """Shared experts actually built (the noshared variant builds none)."""
        return 0 if self.variant == "noshared" else self.num_shared_experts

    def groups(self) -> list[list[int]]:
        """Routed-expert indices allowed for each modality id."""
        if self.expert_groups is not None:
            return [list(g) for g in self.expert_groups]
        return index_partition(self.num_routed_experts, self.num_modalities, self.partition, self.partition_ratio)


@dataclass
class AttentionConfig:
    """Self-attention: DeepSeek-V2 multi-head latent attention (mla) or grouped-query attention (gqa)."""

    kind: AttentionKind = "mla"
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int = 4
    """Key/value heads (gqa only)."""
    head_dim: int = 32
    """Per-head width of q/k/v (gqa only)."""
    q_lora_rank: int | None = None
    """Low-rank query compression (mla); None = a full query projection, as in DeepSeek-V2-Lite."""
    kv_lora_rank: int = 32
    """Width of the compressed key/value latent that the KV cache stores (mla)."""
    qk_nope_head_dim: int = 16
    """Per-head query/key width without rotary embedding (mla)."""
    qk_rope_head_dim: int = 16
    """Per-head query/key width with rotary embedding, shared by all heads for keys (mla)."""
    v_head_dim: int = 16
    """Per-head value width (mla)."""
    cache_latent: bool = True
    """What the KV cache of decoding holds (mla): True = the latent and rope key (kv_lora_rank + qk_rope_head_dim
    numbers per position; attention in the latent space, DeepSeek-V2's inference form), 5x less than False = the
    up-projected keys and values (num_heads * 2 * (qk_nope_head_dim + qk_rope_head_dim) per position; attention as
    in training). A decoding step reads the whole cache, so True is also the faster for the tiny model
    (bench/RESULTS.md, ASR decoding speed). The logits agree to float rounding; training is the same either way."""
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """Long-context RoPE scaling as in a Hugging Face config.json; None = plain RoPE. {"rope_type": "yarn",
    "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"}
    (DeepSeek-V2; also scales the MLA softmax by yarn_mscale(factor, mscale_all_dim)**2) or {"rope_type":
    "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} (Llama-3.x).
    {"rope_type": "default"} is plain RoPE said explicitly (stored as None): in `backbone_overrides` a null
    means "keep the preset's", so this is how an override turns a preset's scaling off."""

    def __post_init__(self) -> None:
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") == PLAIN_ROPE["rope_type"]:
            if extra := sorted(set(self.rope_scaling) - set(PLAIN_ROPE)):
                raise ValueError(f"attention.rope_scaling of rope_type 'default' (plain RoPE) takes no {extra}")
            self.rope_scaling = None
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            required = {"yarn": {"factor", "original_max_position_embeddings"},
                        "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}}
            if kind not in required:
                raise ValueError(
                    f"attention.rope_scaling.rope_type must be 'yarn', 'llama3' or 'default' (plain), got {kind!r}"
                )
            if missing := sorted(required[kind] - set(self.rope_scaling)):
                raise ValueError(f"attention.rope_scaling ({kind}) lacks {missing}")
        if self.kind == "gqa" and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"attention.num_heads={self.num_heads} must be a multiple of attention.num_kv_heads={self.num_kv_heads}"
            )
        if self.qk_rope_head_dim % 2 or (self.kind == "gqa" and self.head_dim % 2):
            raise ValueError("rotary dimensions (attention.qk_rope_head_dim / head_dim) must be even")


@dataclass
class AudioEncoderConfig:
    """Trainable bidirectional context over each utterance's audio frames, between the input projection and
    the decoder (`bidirectional_encoder.py`). With no layers (the default, and MoST's setting: frozen HuBERT input
    already has context) it is not built. A model trained from scratch on log-mel frames needs it."""

    num_conv_layers: int = 0
    """Residual depthwise-convolution blocks (local context)."""
    kernel_size: int = 5
    """Time width of each convolution, in input positions."""
    num_layers: int = 0
    """Bidirectional pre-norm transformer layers after the convolutions."""
    num_heads: int = 4
    ffn_multiplier: int = 4
    """Feed-forward width of the transformer layers, in multiples of hidden_size."""
    input_dropout: float = 0.0
    """Dropout on the projected frames entering the encoder (training only): regularises a small encoder that
    sees few sentences."""
    ctc_head: bool = False
    """Add a CTC head (text ids + one blank) on the encoder output; a stage's `ctc.weight` trains it on ASR
    transcripts. It teaches a from-scratch encoder phonetic frames long before the decoder learns to align."""

    def __post_init__(self) -> None:
        for name in ("num_conv_layers", "num_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"audio_encoder.{name} must be >= 0, got {getattr(self, name)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"audio_encoder.kernel_size must be odd and >= 1, got {self.kernel_size}")
        if not 0 <= self.input_dropout < 1:
            raise ValueError(f"audio_encoder.input_dropout must lie in [0, 1), got {self.input_dropout}")
        if self.ctc_head and not self.enabled:
            raise ValueError("audio_encoder.ctc_head needs an encoder: set num_conv_layers or num_layers > 0")

    @property
    def enabled(self) -> bool:
        """Whether the encoder has any layer (otherwise it is not built)."""
        return self.num_conv_layers + self.num_layers > 0


@dataclass
class ModelConfig:
    """The whole backbone: decoder shape, vocabularies, audio input, attention and MoE settings."""

    hidden_size: int = 128
    num_layers: int = 4
    first_k_dense: int = 1
    """Leading layers with a dense MLP instead of MoE (DeepSeek-V2: 1). num_layers makes all dense."""
    intermediate_size: int = 256
    """Hidden width of the dense layers' SwiGLU MLP."""
    text_vocab_size: int = 267
    """Text ids, special tokens included (byte tokenizer: 256 + 11 specials)."""
    num_audio_units: int = 500
    """Discrete audio units (k-means clusters); unit u has id text_vocab_size + u."""
    audio_feature_dim: int = 160
    """Width of one continuous audio frame fed to the input projection (e.g. 2 stacked 80-bin fbank frames)."""
    max_position: int = 4096
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_text_embeddings: bool = False
    """Share the text LM head with the text rows of the embedding (Llama-3.2 does)."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.first_k_dense <= self.num_layers:
            raise ValueError(f"first_k_dense={self.first_k_dense} must be between 0 and num_layers={self.num_layers}")
        for name in ("hidden_size", "num_layers", "intermediate_size", "text_vocab_size", "num_audio_units"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        moe_layers = sum(self.is_moe_layer(i) for i in range(self.num_layers))
        if self.moe.layer_expert_groups is not None and len(self.moe.layer_expert_groups) != moe_layers:
            raise ValueError(
                f"moe.layer_expert_groups has {len(self.moe.layer_expert_groups)} layers but the backbone has "
                f"{moe_layers} MoE layers: write the groups for this backbone (python -m lightning_most partition)"
            )

    @property
    def vocab_size(self) -> int:
        """Size of the unified id space: text ids then audio units."""
        return self.text_vocab_size + self.num_audio_units

    def is_moe_layer(self, index: int) -> bool:
        """Whether decoder layer `index` has an MoE block (dense variant: never)."""
        return index >= self.first_k_dense and self.moe.variant != "dense"

    def dense_mlp_width(self, index: int) -> int:
        """Hidden width of the SwiGLU of a decoder layer without MoE: intermediate_size in the first `first_k_dense`
        layers, past them (dense variant) the active width of top_k + shared experts."""
        if index < self.first_k_dense:
            return self.intermediate_size
        return (self.moe.top_k + self.moe.num_shared_experts) * self.moe.expert_intermediate_size

    def moe_for_layer(self, index: int) -> MoEConfig:
        """The MoE settings of decoder layer `index`: its own `layer_expert_groups` entry when given."""
        if self.moe.layer_expert_groups is None:
            return self.moe
        groups = self.moe.layer_expert_groups[index - self.first_k_dense]
        return dataclasses.replace(self.moe, expert_groups=groups, layer_expert_groups=None)


PRESETS: dict[str, ModelConfig] = {
    # A few million parameters: CPU tests and the quickstart (seconds per step on 2 cores).
    "tiny": ModelConfig(),
    # ~110M total (~50M active) parameters for one GPU.
    "small": ModelConfig(
        hidden_size=768,
        num_layers=12,
        intermediate_size=2048,
        text_vocab_size=267,
        attention=AttentionConfig(
            num_heads=12, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64
        ),
        moe=MoEConfig(num_routed_experts=16, num_shared_experts=2, top_k=2, expert_intermediate_size=176),
    ),
    # DeepSeek-V2-Lite (15.7B total, 2.4B active) with 500 audio units appended to its 102400 text ids.
    "deepseek-v2-lite": ModelConfig(
        hidden_size=2048,
        num_layers=27,
        first_k_dense=1,
        intermediate_size=10944,
        text_vocab_size=102400,
        num_audio_units=500,
        audio_feature_dim=1024,
        max_position=163840,
        rms_norm_eps=1e-6,
        attention=AttentionConfig(
            kind="mla",
            num_heads=16,
            q_lora_rank=None,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            rope_theta=10000.0,
            # YaRN of the released config.json: its softmax scale and frequencies are part of the weights.
            rope_scaling={"rope_type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                          "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        ),
        moe=MoEConfig(
            num_routed_experts=64,
            num_shared_experts=2,
            top_k=6,
            expert_intermediate_size=1408,
            aux_loss_alpha=0.001,
        ),
    ),
    # Llama-3.2-3B: the dense baseline of the paper's section 6.1 (GQA, tied embeddings).
    "llama-3.2-3b": ModelConfig(
        hidden_size=3072,
        num_layers=28,
        first_k_dense=28,
        intermediate_size=8192,
        text_vocab_size=128267,  # 128256 Llama-3 tokens + our 11 special tokens
        num_audio_units=500,
        audio_feature_dim=1024,
        max_position=131072,
        rms_norm_eps=1e-5,
        tie_text_embeddings=True,
        attention=AttentionConfig(
            kind="gqa", num_heads=24, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
        ),
        moe=MoEConfig(variant="dense", num_routed_experts=2, num_shared_experts=0, top_k=1),
    ),
}


def _optional_twin(cls: type, name: str) -> type:
    """A dataclass with `cls`'s fields, each Optional and defaulting to None (nested dataclasses too)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            twin = _TWINS[tp]
            fields.append((f.name, twin, field(default_factory=twin)))
        else:
            fields.append((f.name, tp | None, None))
    twin = dataclasses.make_dataclass(name, fields)
    twin.__module__ = __name__
    twin.__doc__ = f"Overrides for `{cls.__name__}`: every field optional; unset fields keep the preset's value."
    return twin


_TWINS: dict[type, type] = {}
_TWINS[AttentionConfig] = AttentionOverrides = _optional_twin(AttentionConfig, "AttentionOverrides")
_TWINS[MoEConfig] = MoEOverrides = _optional_twin(MoEConfig, "MoEOverrides")
_TWINS[AudioEncoderConfig] = AudioEncoderOverrides = _optional_twin(AudioEncoderConfig, "AudioEncoderOverrides")
ModelOverrides = _optional_twin(ModelConfig, "ModelOverrides")


def _set_fields(base: Any, overrides: Any) -> Any:
    changes = {}
    for f in dataclasses.fields(overrides):
        value = getattr(overrides, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = _set_fields(getattr(base, f.name), value)
        elif value is not None:
            changes[f.name] = value
    return dataclasses.replace(base, **changes)


def build_config(preset: str = "tiny", overrides: Any = None) -> ModelConfig:
    """The named preset with `overrides` (a `ModelOverrides` or a nested dict) applied and validated."""
    if preset not in PRESETS:
        raise ValueError(f"unknown backbone preset {preset!r}; choose one of {sorted(PRESETS)}")
    if overrides is None:
        return dataclasses.replace(PRESETS[preset])
    if isinstance(overrides, dict):
        overrides = _overrides_from_dict(ModelOverrides, overrides, "backbone_overrides")
    return _set_fields(PRESETS[preset], overrides)


def _overrides_from_dict(twin: type, values: dict, where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(twin)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"{where}.{key} is not a backbone field; valid fields: {sorted(names)}")
        nested = _TWINS_BY_NAME.get(key)
        kwargs[key] = _overrides_from_dict(nested, value, f"{where}.{key}") if nested and isinstance(value, dict) else value
    return twin(**kwargs)


_TWINS_BY_NAME = {"attention": AttentionOverrides, "moe": MoEOverrides, "audio_encoder": AudioEncoderOverrides}


def config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """The `ModelConfig` whose `dataclasses.asdict` is `values` (absent fields take their defaults)."""
    nested = {"attention": AttentionConfig, "moe": MoEConfig, "audio_encoder": AudioEncoderConfig}

    def build(cls: type, fields: dict[str, Any], where: str) -> Any:
        if unknown := sorted(set(fields) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"{where} has no fields {unknown}")
        return cls(**{k: build(nested[k], v, k) if cls is ModelConfig and k in nested else v for k, v in fields.items()})

    return build(ModelConfig, values, "the backbone config")

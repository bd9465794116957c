"""The MoST backbone: a DeepSeek-V2-style decoder over text tokens, audio units and audio frames.

Plain PyTorch (no Lightning). Inputs are the tensors of the batch contract `lightning_most.batch.Batch`;
with a KV cache, `attention_mask` covers the S = cached + T positions, (B, S).

Embedding: ids -> `embed_tokens`, frames -> `audio_projector` (LayerNorm + 2-layer MLP), then the optional
`audio_encoder` (bidirectional context within each utterance, `bidirectional_encoder.py`), placed at feature_mask.
Decoder: `num_layers` pre-norm blocks, the first `first_k_dense` with a dense SwiGLU, the rest MAMoE.
Heads: a text LM head (text ids) and an audio-unit head (units), concatenated into (B, T, V) logits
over the unified id space; with `audio_encoder.ctc_head`, a CTC head (text ids + blank) on the encoder output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_most.attention import KVCache, LayerCache, RMSNorm, build_attention, causal_mask_or_none
from lightning_most.batch import IGNORE_INDEX
from lightning_most.bidirectional_encoder import BidirectionalAudioEncoder
from lightning_most.config import ModelConfig
from lightning_most.mamoe import ModalityAwareRouter, MoEBlock, RoutedExperts, RoutingStats, SwiGLU


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    The text head's gradient arrives as a slice of the concatenated (text + audio) logits' gradient, with
    the concatenation's row stride: at V = 102,400 + 500 that stride is not a multiple of 16 bytes, and
    cuBLAS then runs the head's two backward GEMMs on Ampere kernels at a third of Hopper's speed (the GPU
    profile in bench/RESULTS.md). One copy of the gradient costs far less than that."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


@dataclass
class BackboneOutput:
    """What one forward pass returns."""

    logits: Tensor  # (B, T, V) over the unified id space
    aux_loss: Tensor  # () sum of the MoE layers' load-balancing losses
    routing: list[RoutingStats] = field(default_factory=list)  # one per MoE layer, in layer order
    hidden: Tensor | None = None  # (B, T, d) final normed hidden states
    ctc_logits: Tensor | None = None  # (R, L, text_vocab_size + 1) per audio segment (blank last), with a CTC head
    ctc_lengths: Tensor | None = None  # (R,) frames of each segment; segments are the rows with frames, in order


class DecoderBlock(nn.Module):
    """Pre-norm attention + (dense or MAMoE) MLP, each with a residual connection."""

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.self_attn = build_attention(d, config.attention)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)
        if config.is_moe_layer(index):
            self.mlp: nn.Module = MoEBlock(d, config.moe_for_layer(index))
        else:  # the first_k_dense layers, and the dense ablation's (active width of top_k + shared experts)
            self.mlp = SwiGLU(d, config.dense_mlp_width(index))

    def forward(
        self, x: Tensor, modality_ids: Tensor, valid: Tensor, position_ids: Tensor, mask: Tensor | None, cache: LayerCache | None
    ) -> tuple[Tensor, Tensor, RoutingStats | None]:
        """x (B, T, d) -> x (B, T, d), aux loss (), routing stats (None for dense layers and decoding steps)."""
        x = x + self.self_attn(self.input_layernorm(x), position_ids, mask, cache)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoEBlock):
            y, aux, stats = self.mlp(h, modality_ids, valid, with_stats=cache is None)  # decoding logs no routing
            return x + y, aux, stats
        return x + self.mlp(h), x.new_zeros((), dtype=torch.float32), None


class MoSTBackbone(nn.Module):
    """Decoder-only speech+text LM with modality-aware MoE layers."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        # LayerNorm first: raw log-mel / HuBERT frames have arbitrary scale and offset per corpus.
        self.audio_projector = nn.Sequential(
            nn.LayerNorm(config.audio_feature_dim), nn.Linear(config.audio_feature_dim, d), nn.GELU(), nn.Linear(d, d)
        )
        encoder = config.audio_encoder
        self.audio_encoder = BidirectionalAudioEncoder(d, encoder) if encoder.enabled else None
        self.ctc_head = nn.Linear(d, config.text_vocab_size + 1) if encoder.ctc_head else None
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(d, config.rms_norm_eps)
        # Tied (Llama-3.2): the text head reuses the text rows of the embedding table.
        self.text_head = None if config.tie_text_embeddings else nn.Linear(d, config.text_vocab_size, bias=False)
        self.audio_head = nn.Linear(d, config.num_audio_units, bias=False)
        self.activation_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RoutedExperts):
                nn.init.normal_(module.gate_up_proj, std=std)
                nn.init.normal_(module.down_proj, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, ModalityAwareRouter):
                nn.init.normal_(module.weight, std=std)

    def embed(
        self, input_ids: Tensor, audio_features: Tensor | None = None, feature_mask: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Input embeddings (B, T, d) with projected (and encoded) audio frames at feature_mask, and the encoder's
        padded output per audio segment ((R, L, d), frames per segment (R,)) or None without an encoder or frames."""
        x = self.embed_tokens(input_ids)  # (B, T, d)
        segments = None
        if feature_mask is not None and audio_features is not None and audio_features.numel():
            frames, segments = self.audio_frames(audio_features.to(x.dtype), feature_mask)
            x = x.masked_scatter(feature_mask[..., None], frames.to(x.dtype))  # autocast: bf16 frames, fp32 embeddings
        return x, segments

    def audio_frames(self, audio_features: Tensor, feature_mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Projected (and encoded) frames (N, d), and the encoder's padded output per segment as in `embed`."""
        frames = self.audio_projector(audio_features)  # (N, d)
        if frames.shape[0] != int(feature_mask.sum()):
            raise ValueError(
                f"audio_features has {frames.shape[0]} frames but feature_mask marks {int(feature_mask.sum())} positions"
            )
        if self.audio_encoder is None:
            return frames, None
        counts = feature_mask.sum(dim=1)
        counts = counts[counts > 0]  # (R,) one audio segment per row with frames
        frames, padded = self.audio_encoder(frames, counts)
        return frames, (padded, counts)

    def ctc_logits(self, audio_features: Tensor, feature_mask: Tensor) -> tuple[Tensor, Tensor]:
        """CTC head only, without the decoder: logits (R, L, text_vocab_size + 1) and frames per segment (R,)."""
        if self.ctc_head is None:
            raise ValueError("this backbone has no CTC head: set audio_encoder.ctc_head (and encoder layers)")
        _, (padded, counts) = self.audio_frames(audio_features, feature_mask)
        return self.ctc_head(padded), counts

    def forward(
        self,
        input_ids: Tensor,
        modality_ids: Tensor,
        attention_mask: Tensor | None = None,
        audio_features: Tensor | None = None,
        feature_mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        position_ids: Tensor | None = None,
    ) -> BackboneOutput:
        """Logits over the unified vocabulary, the summed aux loss, and per-MoE-layer routing stats.

        `position_ids` (B, T), the RoPE positions of the T new inputs, may be fractional (`positions.py`);
        by default a position is the count of real positions before it (left padding safe).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.bool, device=input_ids.device)
        if attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask must be (B, cached + T) = {(B, past + T)}, got {tuple(attention_mask.shape)}")
        valid = attention_mask[:, past:]  # (B, T)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T), left padding safe
        elif position_ids.shape != (B, T):
            raise ValueError(f"position_ids must be (B, T) = {(B, T)}, got {tuple(position_ids.shape)}")
        mask = causal_mask_or_none(attention_mask, T)  # (B, 1, T, S), or None: causal
        x, segments = self.embed(input_ids, audio_features, feature_mask)

        aux = x.new_zeros((), dtype=torch.float32)
        routing: list[RoutingStats] = []
        for i, block in enumerate(self.layers):
            if self.activation_checkpointing and self.training and cache is None:
                x, layer_aux, stats = checkpoint(block, x, modality_ids, valid, position_ids, mask, None, use_reentrant=False)
            else:
                x, layer_aux, stats = block(x, modality_ids, valid, position_ids, mask, None if cache is None else cache.layers[i])
            aux = aux + layer_aux
            if stats is not None:
                routing.append(stats)
        h = self.norm(x)
        if self.text_head is None:
            text_logits = F.linear(h, self.embed_tokens.weight[: self.config.text_vocab_size])
        else:
            text_logits = self.text_head(h)
        if h.is_cuda and self.config.vocab_size % 8:
            text_logits = ContiguousGrad.apply(text_logits)
        logits = torch.cat([text_logits, self.audio_head(h)], dim=-1)  # (B, T, V)
        out = BackboneOutput(logits=logits, aux_loss=aux, routing=routing, hidden=h if return_hidden else None)
        if self.ctc_head is not None and segments is not None:
            out.ctc_logits, out.ctc_lengths = self.ctc_head(segments[0]), segments[1]
        return out

    def num_parameters(self, active: bool = False) -> int:
        """Total parameters, or those one token uses (top_k of the routed experts per MoE layer)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        moe = self.config.moe
        for block in self.layers:
            if isinstance(block.mlp, MoEBlock):
                per_expert = sum(p[0].numel() for p in block.mlp.experts.parameters())
                total -= (moe.num_routed_experts - moe.top_k) * per_expert
        return total


def next_token_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (B, T, V) against already-shifted labels (B, T); IGNORE_INDEX is skipped."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)

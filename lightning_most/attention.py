"""Self-attention with rotary position embeddings: DeepSeek-V2 MLA and Llama-style GQA, with a KV cache.

Shapes: B batch, T new positions, S cached + new positions, H heads, D head width.
Attention masks are boolean (B, 1, T, S), True where a query may attend to a key; None means plain causal
attention with T == S (`causal_mask_or_none`), which SDPA runs with its fused kernels.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_most.config import AttentionConfig


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature for a context extended `factor` times."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(dim: int, theta: float, scaling: dict[str, Any] | None = None) -> tuple[Tensor, float]:
    """Inverse frequencies (D/2,) and the cos/sin multiplier of plain, YaRN or Llama-3 RoPE.

    The frequencies are transformers'; YaRN's multiplier is DeepSeek-V2's (modeling_deepseek.py,
    `DeepseekV2YarnRotaryEmbedding`): yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim), with
    mscale = 1 and mscale_all_dim = 0 when absent, unless the config gives `attention_factor` itself.
    transformers agrees when both or neither of mscale / mscale_all_dim are given, not when one is.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # (D/2,)
    if scaling is None:
        return inv_freq, 1.0
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    if scaling["rope_type"] == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (original / wavelen - low) / (high - low)
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        return torch.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled), 1.0
    # YaRN: interpolate the low frequencies by `factor`, keep the high ones, ramp linearly in between.
    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / ((high - low) or 1e-3)).clamp(0, 1)  # (D/2,)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:  # DeepSeek-V2's rule; absent keys take its defaults mscale=1, mscale_all_dim=0
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        mscale, mscale_all_dim = 1.0 if mscale is None else mscale, 0.0 if mscale_all_dim is None else mscale_all_dim
        attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given position ids (rotate-half convention)."""

    def __init__(self, dim: int, theta: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        inv_freq, self.attention_factor = rope_frequencies(dim, theta, scaling)  # (D/2,), float
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, 1, D), broadcastable over heads."""
        freqs = position_ids.float()[..., None] * self.inv_freq  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]  # (B, T, 1, D)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, T, H, D) by the position angles."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class LayerCache:
    """One layer's cached tensors (B, S, ...), in buffers preallocated along the time axis (dim 1).

    `update` writes a step's positions in place after the cached ones and returns views of the filled part, so
    a decoding step copies its new positions only (`torch.cat` would copy the whole cache every step). The
    buffers are allocated at the first update with `capacity` positions (the prompt plus the decoding budget);
    a caller that does not know the length gets a doubled buffer whenever it runs out.

    Each attention module gets its own object (not a layer index into a shared one), so a compiled decoder
    block reads no per-layer constant and every layer reuses one compiled graph.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.buffers: tuple[Tensor, ...] | None = None  # (B, capacity, ...) each
        self.length = 0

    def update(self, *new: Tensor) -> tuple[Tensor, ...]:
        """Append this step's tensors (B, T, ...) and return the full ones (B, S, ...), views of the buffers."""
        end = self.length + new[0].shape[1]
        if self.buffers is None or end > self.buffers[0].shape[1]:
            size = max(end, self.capacity, 2 * self.length)
            grown = tuple(n.new_empty(n.shape[0], size, *n.shape[2:]) for n in new)
            for buffer, old in zip(grown, self.buffers or ()):
                buffer[:, : self.length] = old[:, : self.length]
            self.buffers = grown
        for buffer, n in zip(self.buffers, new):
            buffer[:, self.length : end] = n
        self.length = end
        return tuple(buffer[:, :end] for buffer in self.buffers)

    def select_rows(self, index: Tensor) -> None:
        """Row i becomes old row index[i], all positions (the number of rows may change)."""
        if self.buffers is not None:
            self.buffers = tuple(b.index_select(0, index) for b in self.buffers)

    def copy_rows(self, targets: Tensor, sources: Tensor, start: int) -> None:
        """Rows `targets` take the positions start.. of rows `sources` (read before any is written)."""
        if self.buffers is not None and start < self.length:
            for b in self.buffers:
                b[targets, start : self.length] = b[sources, start : self.length]


class KVCache:
    """The per-layer caches of a decoder stack, each preallocated to `capacity` positions (`LayerCache`).

    Beam search reorders rows with `reorder`: row i continues row index[i]. Rather than copying every cached
    position of every row (`index_select`, as it was), it copies only what differs: the rows whose source is
    another row, and only their positions after `shared_positions` (a prompt that all rows of an example
    share stays where it is). SDPA wants each row's keys in one strided tensor, so a parent-pointer table
    gathered lazily would move as much as `index_select` did, at every step; the copy moves the least.
    """

    def __init__(self, num_layers: int, capacity: int = 0) -> None:
        self.layers = [LayerCache(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self.layers[0].length

    def reorder(self, index: Tensor, shared_positions: int = 0) -> None:
        """Row i takes old row index[i]'s cached positions in every layer (beam search).

        Args:
            index: (rows,) source row of each row; another number of rows than cached copies every position
                (e.g. repeating each prompt row over its beam).
            shared_positions: the first positions are equal in each row and its source already (a prompt shared
                by the rows of an example): they are not copied.
        """
        rows = self.layers[0].buffers[0].shape[0] if self.layers[0].buffers is not None else None
        if index.shape[0] != rows:
            for layer in self.layers:
                layer.select_rows(index)
            return
        moved = (index != torch.arange(rows, device=index.device)).nonzero()[:, 0]  # rows continuing another row
        if moved.numel():
            sources = index[moved]
            for layer in self.layers:
                layer.copy_rows(moved, sources, shared_positions)


LATENT_NORM_EPS = 1e-6
"""eps of MLA's q_a / kv_a latent norms: DeepSeek-V2 builds them with its RMSNorm's default, whatever the model's
`rms_norm_eps` (modeling_deepseek.py and transformers' DeepseekV2Attention alike)."""


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 MLA: keys/values from a shared low-rank latent.

    What the KV cache holds (`AttentionConfig.cache_latent`):
    - False: each position's up-projected keys and (padded) values, H * 2 * (nope + rope) numbers, so a
      decoding step projects only its new positions and attends as training does (the same keys and values,
      bit for bit);
    - True: the latent and the rope key, r + rope numbers, shared by all heads. Decoding then attends in the
      latent space, the up-projection absorbed into the query and the output (DeepSeek-V2's inference form):
      per head, q_nope . (W_uk c) = (W_uk^T q_nope) . c, and sum_s p_s W_uv c_s = W_uv (sum_s p_s c_s), i.e.
      multi-query attention with one key (c, k_pe) and one value c per position.
    """

    def __init__(self, hidden_size: int, config: AttentionConfig) -> None:
        super().__init__()
        c = config
        self.num_heads, self.nope, self.rope, self.v_dim = c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.kv_lora_rank, self.cache_latent = c.kv_lora_rank, c.cache_latent
        q_width = c.num_heads * (self.nope + self.rope)
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, q_width, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden_size, c.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(c.q_lora_rank, q_width, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, c.kv_lora_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, c.num_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(c.num_heads * self.v_dim, hidden_size, bias=False)
        self.rotary = RotaryEmbedding(self.rope, c.rope_theta, c.rope_scaling)
        self.scale = (self.nope + self.rope) ** -0.5
        if c.rope_scaling and c.rope_scaling.get("mscale_all_dim"):  # YaRN temperature (DeepSeek-V2)
            self.scale *= yarn_mscale(c.rope_scaling["factor"], c.rope_scaling["mscale_all_dim"]) ** 2

    def forward(self, x: Tensor, position_ids: Tensor, mask: Tensor | None, cache: LayerCache | None = None) -> Tensor:
        """x (B, T, d), position_ids (B, T), mask (B, 1, T, S) -> (B, T, d)."""
        B, T, _ = x.shape
        H = self.num_heads
        q = self.q_proj(x) if hasattr(self, "q_proj") else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(B, T, H, self.nope + self.rope).split([self.nope, self.rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent)  # (B, T, r)
        cos, sin = self.rotary(position_ids)
        q_pe = apply_rotary(q_pe, cos, sin)  # (B, T, H, rope)
        k_pe = apply_rotary(k_pe[:, :, None, :], cos, sin)  # (B, T, 1, rope): one rope key for all heads
        if cache is not None and self.cache_latent:
            return self._latent_attention(q_nope, q_pe, latent, k_pe[:, :, 0], mask, cache)
        k_nope, v = self.kv_b_proj(latent).view(B, T, H, self.nope + self.v_dim).split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(B, T, H, self.rope)], dim=-1)  # (B, T, H, nope + rope)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, T, H, nope + rope)
        qk_dim = self.nope + self.rope
        if self.v_dim < qk_dim:  # fused (flash) kernels need one head width: pad v with zeros, as transformers does
            v = F.pad(v, (0, qk_dim - self.v_dim))
        if cache is not None:
            k, v = cache.update(k, v)  # (B, S, H, nope + rope) each
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
            scale=self.scale,
        )[..., : self.v_dim]  # (B, H, T, v_dim)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * self.v_dim))

    def _latent_attention(
        self, q_nope: Tensor, q_pe: Tensor, latent: Tensor, k_pe: Tensor, mask: Tensor | None, cache: LayerCache
    ) -> Tensor:
        """Attention over a cache of latents: q_nope (B, T, H, nope), q_pe (B, T, H, rope), latent (B, T, r),
        k_pe (B, T, rope) -> (B, T, d)."""
        B, T, H, _ = q_nope.shape
        r = self.kv_lora_rank
        w_uk, w_uv = self.kv_b_proj.weight.view(H, self.nope + self.v_dim, r).split([self.nope, self.v_dim], dim=1)
        q_latent = torch.matmul(q_nope.transpose(1, 2), w_uk)  # (B, H, T, r): W_uk^T q_nope per head
        q = torch.cat([q_latent, q_pe.transpose(1, 2)], dim=-1)  # (B, H, T, r + rope)
        (keys,) = cache.update(torch.cat([latent, k_pe], dim=-1))  # (B, S, r + rope): (latent, rope key) per position
        keys = keys[:, None]  # (B, 1, S, r + rope): one key head for all query heads
        if T == 1:  # a decoding step: the H queries as one head's H positions, so SDPA reads each key once (enable_gqa
            # would copy the keys once per head); the new position sees every cached one: no causal mask
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, keys, attn_mask=mask, scale=self.scale)
            out = out.transpose(1, 2)[..., :r]  # (B, H, 1, r)
        else:
            out = F.scaled_dot_product_attention(
                q, keys, keys, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=True,
            )[..., :r]  # (B, H, T, r): the attention-weighted latent (the value is the latent part of the key)
        out = torch.matmul(out, w_uv.transpose(1, 2))  # (B, H, T, v_dim)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * self.v_dim))


def set_cache_latent(model: nn.Module, enabled: bool) -> None:
    """Set what the KV caches of `model`'s MLA layers hold from the next decoding on (`AttentionConfig.cache_latent`)."""
    for module in model.modules():
        if isinstance(module, MultiHeadLatentAttention):
            module.cache_latent = enabled


class GroupedQueryAttention(nn.Module):
    """Llama-style attention: H query heads share H_kv key/value heads; the cache holds k and v."""

    def __init__(self, hidden_size: int, config: AttentionConfig) -> None:
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, hidden_size, bias=False)
        self.rotary = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling)

    def forward(self, x: Tensor, position_ids: Tensor, mask: Tensor | None, cache: LayerCache | None = None) -> Tensor:
        """x (B, T, d), position_ids (B, T), mask (B, 1, T, S) -> (B, T, d)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        cos, sin = self.rotary(position_ids)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, S, H_kv, D)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


def build_attention(hidden_size: int, config: AttentionConfig) -> nn.Module:
    """The attention module named by `config.kind`."""
    if config.kind == "mla":
        return MultiHeadLatentAttention(hidden_size, config)
    return GroupedQueryAttention(hidden_size, config)


def attention_mask(padding_mask: Tensor, num_new: int) -> Tensor:
    """Causal mask over keys, padding_mask (B, S) True on real positions -> (B, 1, T, S) with T = num_new.

    The last `num_new` key positions are the queries. Each query always sees itself, so rows of padding
    queries are never fully masked (which would give NaN).
    """
    S = padding_mask.shape[1]
    q_pos = torch.arange(S - num_new, S, device=padding_mask.device)  # (T,)
    k_pos = torch.arange(S, device=padding_mask.device)  # (S,)
    causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
    allowed = causal[None] & padding_mask[:, None, :]  # (B, T, S)
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]
    return allowed[:, None]


def causal_mask_or_none(padding_mask: Tensor, num_new: int) -> Tensor | None:
    """None (plain causal attention) when every position is new and each row's real positions come first, else
    `attention_mask`.

    With right padding a real query's causal window holds real keys only, so the two masks give real
    positions the same outputs; padding queries (whose outputs no loss reads) then attend to earlier
    padding too. SDPA runs the None case with its fused causal kernels (flash attention on CPU).
    """
    S = padding_mask.shape[1]
    if num_new != S:  # cached decoding: the new queries sit after the cache
        return attention_mask(padding_mask, num_new)
    real_first = torch.arange(S, device=padding_mask.device)[None] < padding_mask.sum(dim=1, keepdim=True)  # (B, S)
    return None if bool(torch.equal(real_first, padding_mask)) else attention_mask(padding_mask, num_new)

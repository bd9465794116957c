"""The Modality-Aware Mixture-of-Experts (MAMoE) layer of MoST, and its ablation variants.

Forward pass of `MoEBlock` on N = B*T tokens of width d, E routed experts, top-k, M modalities:

1. Router logits (N, E) -> softmax over all E experts (fp32).
2. Modality mask: token t may only use the experts of its modality's group (`group_mask[m_t]`).
   `masked_softmax` (default, the official MoST release): scores outside the group are zeroed and the
   in-group scores are NOT renormalised, so a token's routed weights sum to its probability mass on
   its own group (< 1); the aux loss sees these masked scores. `group_renormalized`: softmax over the
   group's logits only, weights of the group sum to 1. `vanilla` uses no mask.
3. Top-k inside the group; the chosen scores are the combination weights, times `routed_scaling_factor`, or
   with `norm_topk_prob` divided by their sum instead (DeepSeek-V2). A top_k larger than the group fills
   the extra slots with off-group experts at weight 0, as the official release does.
4. Dropless dispatch: the N*k (token, expert) pairs are sorted by expert, every expert runs once on
   its contiguous slice (one grouped GEMM where torch has `_grouped_mm`), outputs are weighted and
   scattered back with `index_add_`. No Python loop over tokens.
5. y = routed(h) + shared(h): shared experts (a SwiGLU of width num_shared * expert width) see every token.

The default is `masked_softmax` because it is what the released MoST checkpoints were trained with;
`group_renormalized` is the natural alternative (each group is then a complete MoE of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from lightning_most.config import MoEConfig


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the dense MLP and the shared-expert block."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _native_grouped_mm_ok(x: Tensor, w: Tensor) -> bool:
    # torch._grouped_mm needs 16-byte aligned strides on both operands; its CUDA kernels are bf16 ones
    # (fp32 on a GPU takes the per-expert loop rather than risk an unsupported-dtype error).
    align = 16 // x.element_size()
    if x.is_cuda and x.dtype != torch.bfloat16:
        return False
    return hasattr(torch, "_grouped_mm") and x.shape[-1] % align == 0 and w.shape[-1] % align == 0


def _grouped_mm_loop(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    out = x.new_empty(x.shape[0], w.shape[-1])
    start = 0
    for e, end in enumerate(offsets.tolist()):  # one host copy of the (E,) offsets
        torch.mm(x[start:end], w[e], out=out[start:end])
        start = end
    return out


@torch.library.custom_op("lightning_most::grouped_mm", mutates_args=())
def _grouped_mm(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """(N, a) rows sorted by group, (G, a, b), offsets (G,) end row of each group -> (N, b)."""
    if _native_grouped_mm_ok(x, w):
        return torch._grouped_mm(x, w, offs=offsets)
    return _grouped_mm_loop(x, w, offsets)


@_grouped_mm.register_fake
def _(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


@torch.library.custom_op("lightning_most::grouped_mm_backward", mutates_args=())
def _grouped_mm_backward(x: Tensor, w: Tensor, offsets: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `_grouped_mm` for x (N, a) and w (G, a, b) from grad (N, b)."""
    grad = grad.contiguous()  # the kernels reject expanded (stride-0) incoming gradients
    if _native_grouped_mm_ok(x, w):
        grad_x = torch._grouped_mm(grad, w.transpose(1, 2), offs=offsets)  # (N, a)
        grad_w = torch._grouped_mm(x.t(), grad, offs=offsets)  # (G, a, b); empty groups get zeros
        return grad_x, grad_w
    grad_x = _grouped_mm_loop(grad, w.transpose(1, 2), offsets)
    grad_w = torch.zeros_like(w)
    start = 0
    for e, end in enumerate(offsets.tolist()):
        torch.mm(x[start:end].t(), grad[start:end], out=grad_w[e])
        start = end
    return grad_x, grad_w


@_grouped_mm_backward.register_fake
def _(x: Tensor, w: Tensor, offsets: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(w)


def _grouped_mm_setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
    x, w, offsets = inputs
    ctx.save_for_backward(x, w, offsets)


def _grouped_mm_autograd(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
    x, w, offsets = ctx.saved_tensors
    grad_x, grad_w = _grouped_mm_backward(x, w, offsets, grad)
    return grad_x, grad_w, None


_grouped_mm.register_autograd(_grouped_mm_autograd, setup_context=_grouped_mm_setup_context)


def grouped_matmul(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """x (N, a) with rows sorted by expert, times w (E, a, b) per expert slice (`offsets` (E,) end rows) -> (N, b).

    One opaque custom op (forward and backward), so `torch.compile` sees no data-dependent shapes or host
    syncs and never traces `torch._grouped_mm`'s bf16-only meta kernel; inside, `torch._grouped_mm` runs
    where it can (bf16 on CUDA, any aligned dtype on CPU), else one matmul per expert on its contiguous slice.
    Under autocast both operands are cast to the autocast dtype, as `F.linear` would be.
    """
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w = x.to(dtype), w.to(dtype)
    return _grouped_mm(x, w, offsets)


def _local(weight: Tensor) -> Tensor:
    """This rank's experts of a stacked expert weight: its `Shard(0)` slice under expert parallelism, else all of it."""
    return weight.to_local() if isinstance(weight, DTensor) else weight


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored as stacked weights, run on expert-sorted tokens.

    Under expert parallelism (`expert_parallel.py`) the weights are DTensors split by expert, and `forward`
    runs this rank's slice of them (`counts` then has one entry per local expert).
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts, self.intermediate_size = num_experts, intermediate_size
        # gate and up projections fused: (E, d, 2h); down: (E, h, d). Row-vector convention: x @ w.
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden_size, 2 * intermediate_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))

    def forward(
        self, x_sorted: Tensor, counts: Tensor, row_weights: Tensor | None = None,
        weights: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x_sorted (N*k, d) sorted by expert, counts (E,) rows per expert -> (N*k, d).

        `row_weights` (N*k,) scale each row's output; applied before the (linear) down projection,
        on the h-wide activation rather than the d-wide output. `weights` (gate_up (E, d, 2h), down (E, h, d))
        run instead of the module's own (every expert, gathered for evaluation under expert parallelism).
        """
        gate_up_proj, down_proj = weights if weights is not None else (_local(self.gate_up_proj), _local(self.down_proj))
        offsets = torch.cumsum(counts, 0).to(torch.int32)  # (E,) end row of each expert's slice
        gate_up = grouped_matmul(x_sorted, gate_up_proj, offsets)  # (N*k, 2h)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        hidden = F.silu(gate) * up  # (N*k, h)
        if row_weights is not None:
            hidden = hidden * row_weights[:, None].to(hidden.dtype)
        return grouped_matmul(hidden, down_proj, offsets)  # (N*k, d)

    def expert_forward(self, x: Tensor, expert: int) -> Tensor:
        """Expert `expert` alone on x (.., d): the reference semantics of one expert."""
        gate, up = (x @ self.gate_up_proj[expert]).split(self.intermediate_size, dim=-1)
        return (F.silu(gate) * up) @ self.down_proj[expert]


@dataclass
class RoutingStats:
    """Routing of one MoE layer in one forward pass (detached, for logging)."""

    expert_load: Tensor  # (M, E) number of (token, in-group expert) assignments per modality
    entropy: Tensor  # (M,) mean entropy (nats) of the in-group routing distribution per modality
    tokens: Tensor  # (M,) number of (non-padding) tokens per modality


class ModalityAwareRouter(nn.Module):
    """Softmax gate over all routed experts, masked to each token's modality group, top-k inside it."""

    def __init__(self, hidden_size: int, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        E, M = config.num_routed_experts, config.num_modalities
        self.weight = nn.Parameter(torch.empty(E, hidden_size))
        group_mask = torch.zeros(M, E, dtype=torch.bool)  # (M, E) True where modality m may use expert e
        if config.variant == "vanilla":
            group_mask[:] = True
        else:
            for m, group in enumerate(config.groups()):
                group_mask[m, group] = True
        self.register_buffer("group_mask", group_mask, persistent=False)

    def forward(self, h: Tensor, modality_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (N, d), modality_ids (N,) -> expert indices (N, k), combination weights (N, k), gate scores (N, E)."""
        with torch.autocast(h.device.type, enabled=False):  # autocast would run the GEMM in bf16 regardless
            logits = F.linear(h.float(), self.weight.float())  # (N, E), fp32 for a stable softmax and top-k
        allowed = self.group_mask[modality_ids]  # (N, E)
        if self.config.gate == "group_renormalized":
            scores = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # (N, E), 0 off-group
        else:
            scores = logits.softmax(dim=-1).masked_fill(~allowed, 0.0)  # (N, E), not renormalised
        # Off-group experts get -1 so top-k never picks them, even when an in-group score underflows to 0; with
        # top_k larger than the group they fill the extra slots, at weight 0 (the official release's zeros).
        # A stable sort, not torch.topk: equal scores go to the lower expert index on every device (topk's tie
        # order is unspecified and differs between kernels; an upcycled model's zero router is all ties).
        ranked = scores.masked_fill(~allowed, -1.0).sort(dim=-1, descending=True, stable=True)
        weights, indices = ranked.values[:, : self.config.top_k], ranked.indices[:, : self.config.top_k]  # (N, k)
        weights = weights.clamp(min=0.0)  # (N, k)
        if self.config.norm_topk_prob and self.config.top_k > 1:  # DeepSeek-V2: renormalise, no routed scaling
            return indices, weights / (weights.sum(dim=-1, keepdim=True) + 1e-20), scores
        return indices, weights * self.config.routed_scaling_factor, scores


def load_balancing_loss(scores: Tensor, indices: Tensor, valid: Tensor, alpha: float) -> Tensor:
    """DeepSeek-V2 sequence-level auxiliary loss: alpha * mean_b sum_e f_be * P_be.

    Args:
        scores: (B, T, E) gate scores (masked as routed).
        indices: (B, T, k) chosen experts.
        valid: (B, T) bool, False on padding.
        alpha: loss weight.

    f_be = E / (k * T_b) * (number of tokens of sequence b routed to e); P_be = mean over the T_b valid
    tokens of b of scores[b, t, e]. Balanced routing over all experts gives f = 1 for every expert.
    """
    B, T, E = scores.shape
    k = indices.shape[-1]
    validf = valid.float()
    n_valid = validf.sum(dim=1).clamp(min=1.0)  # (B,)
    counts = torch.zeros(B, E, device=scores.device, dtype=torch.float32)
    counts.scatter_add_(1, indices.reshape(B, T * k), validf.repeat_interleave(k, dim=1))  # (B, E)
    f = counts * E / (k * n_valid[:, None])  # (B, E)
    p = (scores * validf[..., None]).sum(dim=1) / n_valid[:, None]  # (B, E)
    return alpha * (f * p).sum(dim=1).mean()


class MoEBlock(nn.Module):
    """MAMoE layer (variants mamoe / vanilla / noshared): y = routed(h) + shared(h), plus aux loss and stats."""

    def __init__(self, hidden_size: int, config: MoEConfig) -> None:
        super().__init__()
        if config.variant == "dense":
            raise ValueError("the dense variant has no MoE block: build a SwiGLU of the active width instead")
        self.config = config
        self.router = ModalityAwareRouter(hidden_size, config)
        self.experts = RoutedExperts(config.num_routed_experts, hidden_size, config.expert_intermediate_size)
        n_shared = config.shared_experts
        self.shared_experts = SwiGLU(hidden_size, n_shared * config.expert_intermediate_size) if n_shared else None
        self.expert_exchange = None  # set by `expert_parallel.apply_expert_parallel`: experts on other ranks too

    def forward(
        self, h: Tensor, modality_ids: Tensor, valid: Tensor, with_stats: bool = True
    ) -> tuple[Tensor, Tensor, RoutingStats | None]:
        """h (B, T, d), modality_ids (B, T), valid (B, T) bool -> y (B, T, d), aux loss (), routing stats (None
        without `with_stats`: decoding steps, which nothing logs, skip their dozen small ops)."""
        B, T, d = h.shape
        k, E = self.config.top_k, self.config.num_routed_experts
        flat = h.reshape(B * T, d)  # (N, d)
        indices, weights, scores = self.router(flat, modality_ids.reshape(-1))  # (N, k), (N, k), (N, E)

        # Dispatch: sort the N*k (token, expert) pairs by expert so each expert owns one contiguous slice.
        expert_of_pair = indices.reshape(-1)  # (N*k,)
        order = torch.argsort(expert_of_pair, stable=True)  # (N*k,)
        token_of_pair = order // k  # (N*k,) source token of each sorted pair
        counts = torch.zeros(E, dtype=torch.long, device=h.device).index_add_(
            0, expert_of_pair, torch.ones_like(expert_of_pair)
        )  # (E,) pairs per expert (bincount's output size is data-dependent, which breaks compiled graphs)
        pair_weight = weights.reshape(-1)[order]  # (N*k,) combination weight of each sorted pair
        if self.expert_exchange is None:
            expert_out = self.experts(flat[token_of_pair], counts, pair_weight)  # (N*k, d), already weighted
        else:  # expert parallelism: the pairs go to the ranks holding their experts and come back unweighted
            expert_out = self.expert_exchange(self.experts, flat[token_of_pair], counts)  # (N*k, d)
            expert_out = expert_out * pair_weight[:, None].to(expert_out.dtype)
        routed = expert_out.new_zeros(flat.shape).index_add_(0, token_of_pair, expert_out)  # (N, d)

        y = routed.reshape(B, T, d).to(h.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(h)

        aux = h.new_zeros((), dtype=torch.float32)
        if self.training and self.config.aux_loss_alpha > 0:
            aux = load_balancing_loss(scores.reshape(B, T, E), indices.reshape(B, T, k), valid, self.config.aux_loss_alpha)
        stats = self._stats(indices, scores, modality_ids.reshape(-1), valid.reshape(-1)) if with_stats else None
        return y, aux, stats

    @torch.no_grad()
    def _stats(self, indices: Tensor, scores: Tensor, modality_ids: Tensor, valid: Tensor) -> RoutingStats:
        M, E = self.config.num_modalities, self.config.num_routed_experts
        k = indices.shape[-1]
        m_valid = torch.where(valid, modality_ids, M)  # padding goes to an extra row that is dropped
        load = torch.zeros(M + 1, E, device=scores.device)
        in_group = self.router.group_mask[modality_ids].gather(1, indices)  # (N, k) False on weight-0 extra slots
        load.index_put_((m_valid.repeat_interleave(k), indices.reshape(-1)), in_group.reshape(-1).float(), accumulate=True)
        p = scores / scores.sum(dim=-1, keepdim=True).clamp(min=1e-20)  # (N, E) in-group distribution
        entropy = -(p * p.clamp(min=1e-20).log()).sum(dim=-1)  # (N,)
        tokens = torch.zeros(M + 1, device=scores.device).index_add_(0, m_valid, torch.ones_like(entropy))
        ent_sum = torch.zeros(M + 1, device=scores.device).index_add_(0, m_valid, entropy)
        return RoutingStats(expert_load=load[:M], entropy=ent_sum[:M] / tokens[:M].clamp(min=1), tokens=tokens[:M])

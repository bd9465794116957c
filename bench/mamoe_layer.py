"""Benchmark: one MAMoE layer, forward + backward, against two references in the same process.

    python bench/mamoe_layer.py                      # both shapes, CPU
    python bench/mamoe_layer.py --shapes tiny --device cuda --dtype bfloat16

References, at the same shapes and with the same router and shared experts:
  (a) loop: Hugging Face's eager path, run as transformers' own `DeepseekV2Experts` (a Python loop
      over experts with one-hot index masks, stacked weights indexed per expert, index_add).
  (b) floor: the same active FLOPs with no routing at all: all T*k token-expert pairs through one
      expert-sized SwiGLU in one GEMM each, plus the shared experts on the T tokens.
Runs alternate (ours, loop, floor, ours, ...) so that machine noise hits all three alike; each
figure is the median over rounds. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_most.config import MoEConfig
from lightning_most.host_memory import reuse_freed_host_memory
from lightning_most.mamoe import MoEBlock

SHAPES = {
    # The quickstart (tiny preset) MoE layer on a 2048-token batch.
    "tiny": {"d": 128, "experts": 16, "inter": 64, "top_k": 2, "shared": 1, "tokens": 2048},
    # One DeepSeek-V2-Lite MoE layer on 4096 tokens, half text half audio.
    "deepseek-v2-lite": {"d": 2048, "experts": 64, "inter": 1408, "top_k": 6, "shared": 2, "tokens": 4096},
}


class LoopMoE(nn.Module):
    """Reference (a): transformers' own DeepseekV2Experts with the same router; `implementation` names its experts
    backend (`eager`: the loop over experts; `grouped_mm`: sorted tokens and one grouped GEMM)."""

    def __init__(self, block: MoEBlock, implementation: str = "eager") -> None:
        super().__init__()
        from transformers import DeepseekV2Config
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Experts

        self.router, self.shared = block.router, block.shared_experts
        d = block.experts.down_proj.shape[-1]
        hf_cfg = DeepseekV2Config(hidden_size=d, n_routed_experts=block.config.num_routed_experts,
                                  moe_intermediate_size=block.config.expert_intermediate_size, hidden_act="silu",
                                  experts_implementation=implementation)
        self.experts = DeepseekV2Experts(hf_cfg)
        with torch.no_grad():  # HF stores (out, in) per expert: our (E, d, 2h) / (E, h, d) transposed
            self.experts.gate_up_proj.copy_(block.experts.gate_up_proj.transpose(1, 2))
            self.experts.down_proj.copy_(block.experts.down_proj.transpose(1, 2))

    def forward(self, h: Tensor, modality_ids: Tensor) -> Tensor:
        B, T, d = h.shape
        flat = h.reshape(-1, d)
        indices, weights, _ = self.router(flat, modality_ids.reshape(-1))
        routed = self.experts(flat, indices, weights.to(flat.dtype))
        return routed.reshape(B, T, d) + self.shared(h)


class FloorMLP(nn.Module):
    """Reference (b): T*k rows through one expert-sized SwiGLU, plus the shared experts, no routing."""

    def __init__(self, block: MoEBlock) -> None:
        super().__init__()
        self.top_k = block.config.top_k
        h = block.config.expert_intermediate_size
        self.gate_up = nn.Parameter(block.experts.gate_up_proj[0].detach().clone())  # (d, 2h)
        self.down = nn.Parameter(block.experts.down_proj[0].detach().clone())  # (h, d)
        self.h, self.shared = h, block.shared_experts

    def forward(self, h: Tensor, modality_ids: Tensor) -> Tensor:
        B, T, d = h.shape
        pairs = h.reshape(-1, d).repeat_interleave(self.top_k, dim=0)  # (T*k, d)
        gate, up = (pairs @ self.gate_up).split(self.h, dim=-1)
        routed = ((F.silu(gate) * up) @ self.down).view(B * T, self.top_k, d).sum(1)
        return routed.view(B, T, d) + self.shared(h)


def _time_fwd_bwd(fn, h: Tensor, modality: Tensor, device: str, params: list[nn.Parameter], grads: str) -> float:
    h = h.detach().requires_grad_()
    if grads == "none":  # as a training step after `optimizer.zero_grad(set_to_none=True)` (Lightning's default)
        for p in params:
            p.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    y = fn(h, modality)
    y.backward(torch.ones_like(y))
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def bench_shape(name: str, rounds: int, device: str, dtype: torch.dtype, grads: str = "none") -> dict:
    """Median fwd+bwd ms of ours, loop (a) and floor (b) at one shape."""
    s = SHAPES[name]
    cfg = MoEConfig(num_routed_experts=s["experts"], num_shared_experts=s["shared"], top_k=s["top_k"],
                    expert_intermediate_size=s["inter"])
    torch.manual_seed(0)
    ours = MoEBlock(s["d"], cfg)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.02)
    loop, floor = LoopMoE(ours), FloorMLP(ours)
    for m in (ours, loop, floor):
        m.to(device=device, dtype=dtype)
    T = s["tokens"]
    h = torch.randn(1, T, s["d"], device=device, dtype=dtype)
    modality = torch.cat([torch.zeros(T // 2), torch.ones(T - T // 2)]).long()[torch.randperm(T)][None].to(device)
    valid = torch.ones(1, T, dtype=torch.bool, device=device)
    runs = {
        "ours": lambda x, m: ours(x, m, valid)[0],
        "loop": loop,
        "floor": floor,
    }
    params = {"ours": list(ours.parameters()), "loop": list(loop.parameters()), "floor": list(floor.parameters())}
    for key, fn in runs.items():  # warm-up
        _time_fwd_bwd(fn, h, modality, device, params[key], grads)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times[key].append(_time_fwd_bwd(fn, h, modality, device, params[key], grads))
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {
        "tokens": T, "d": s["d"], "experts": s["experts"], "top_k": s["top_k"], "shared": s["shared"],
        "ours_ms": round(ms["ours"], 2), "loop_ms": round(ms["loop"], 2), "floor_ms": round(ms["floor"], 2),
        "ratio_vs_loop": round(ms["loop"] / ms["ours"], 3),
        "ratio_vs_floor": round(ms["ours"] / ms["floor"], 3),
        "rounds": rounds, "grads": grads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--grads", default="none", choices=["none", "accumulate"],
                        help="none: parameter gradients are set to None before each timed step, as in training with "
                        "zero_grad(set_to_none=True); accumulate: they add up over the rounds (before 2026-12-03)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    host_malloc_reuse = reuse_freed_host_memory()  # as `python -m lightning_most` (LIGHTNING_MOST_HOST_MALLOC=system: off)
    result = {
        "host_malloc_reuse": host_malloc_reuse,
        "torch": torch.__version__, "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "machine": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
    }
    for name in args.shapes:
        result[name] = bench_shape(name, args.rounds, args.device, dtype, args.grads)
        print(name, result[name], flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

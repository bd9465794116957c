"""Benchmark: one training step of our backbone against transformers' DeepseekV2ForCausalLM, same weights.

    python bench/train_step_vs_transformers.py                      # both shapes, eager and compiled, 1 thread
    python bench/train_step_vs_transformers.py --shapes tiny --no-compile --rounds 3

A step is forward + next-token loss + backward on a text-only batch (no optimizer step). transformers'
model is built from a DeepseekV2Config, saved, and converted by `lightning_most.convert` into our
backbone (MoE variant `vanilla`: no modality mask, so both route every token over all experts and
compute the same function; the script reports the largest difference of their text logits). Ours also
computes its aux loss and routing statistics (transformers' model has neither), and its loss is over the
unified vocabulary (the text ids plus one audio unit).

Implementations, alternated within each round so machine noise hits all alike (median over rounds):
  ours            eager backbone (sorted dropless dispatch, torch._grouped_mm)
  ours_compiled   `compile_backbone`: each decoder block under torch.compile (inductor, fullgraph)
  hf_grouped_mm   transformers' default experts backend (`experts_implementation="grouped_mm"`)
  hf_compiled     torch.compile of the whole transformers model with that backend
Peak RSS is measured in a child process per implementation (eager, same shapes, random weights): the
maximum resident set of a process that builds the model and runs two steps.
The last line printed is one JSON object with every figure; `speedup_vs_best_hf` is the fastest
transformers time over the fastest of ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from lightning_most.backbone import MoSTBackbone, next_token_loss
from lightning_most.batch import IGNORE_INDEX
from lightning_most.compile import CompileConfig, compile_backbone
from lightning_most.convert import config_from_hf, hf_state_dict
from lightning_most.host_memory import reuse_freed_host_memory

SHAPES = {
    # The `tiny` preset's decoder (d 128, 4 layers, 16 experts x 64, top-2, 1 shared) on 8 x 256 tokens.
    "tiny": {
        "hf": {"hidden_size": 128, "num_hidden_layers": 4, "first_k_dense_replace": 1, "intermediate_size": 256,
               "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
               "num_attention_heads": 4, "kv_lora_rank": 32, "q_lora_rank": None, "qk_nope_head_dim": 16,
               "qk_rope_head_dim": 16, "v_head_dim": 16, "vocab_size": 267},
        "batch": (8, 256),
    },
    # d 1024, 4 layers (1 dense), 16 experts x 704, top-2, 1 shared, 16k vocabulary, on 2 x 512 tokens.
    "d1024": {
        "hf": {"hidden_size": 1024, "num_hidden_layers": 4, "first_k_dense_replace": 1, "intermediate_size": 2816,
               "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 704,
               "num_attention_heads": 8, "kv_lora_rank": 256, "q_lora_rank": None, "qk_nope_head_dim": 64,
               "qk_rope_head_dim": 32, "v_head_dim": 64, "vocab_size": 16384},
        "batch": (2, 512),
    },
}
COMMON_HF = {"hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
             "experts_implementation": "grouped_mm"}


def hf_config(shape: str):
    """transformers' DeepseekV2Config at `shape`."""
    from transformers import DeepseekV2Config

    return DeepseekV2Config(**SHAPES[shape]["hf"], **COMMON_HF)


def hf_model(shape: str):
    """transformers' DeepseekV2ForCausalLM at `shape` (seeded), in training mode."""
    from transformers import DeepseekV2ForCausalLM

    torch.manual_seed(0)
    model = DeepseekV2ForCausalLM(hf_config(shape))
    with torch.no_grad():  # a peaked router, so that top-k choices are not decided by rounding
        for name, p in model.named_parameters():
            if name.endswith(".mlp.gate.weight"):
                p.normal_(0, 0.5)
    return model.train()


def our_model(shape: str, weights_from=None) -> MoSTBackbone:
    """Our backbone at `shape`: `weights_from`'s weights (a transformers model, converted through a saved
    checkpoint), or fresh ones when None (without building transformers' model)."""
    with tempfile.TemporaryDirectory() as tmp:
        (weights_from or hf_config(shape)).save_pretrained(tmp)
        config = config_from_hf(tmp, num_audio_units=1, audio_feature_dim=16, moe_variant="vanilla")
        model = MoSTBackbone(config)
        if weights_from is not None:
            model.load_state_dict(hf_state_dict(tmp, config))
    return model.train()


def steps(ours: MoSTBackbone, hf, batch: torch.Tensor) -> dict:
    """One training step per implementation: name -> callable returning the loss."""
    labels = torch.full_like(batch, IGNORE_INDEX)
    labels[:, :-1] = batch[:, 1:]  # ours takes shifted labels; transformers shifts inside
    modality = torch.zeros_like(batch)

    def ours_step(model) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        out = model(batch, modality)
        loss = next_token_loss(out.logits, labels)
        (loss + out.aux_loss).backward()
        return loss.detach()

    def hf_step(model) -> torch.Tensor:
        hf.zero_grad(set_to_none=True)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        return loss.detach()

    return {"ours": lambda: ours_step(ours), "hf_grouped_mm": lambda: hf_step(hf)}


def bench_shape(shape: str, rounds: int, compile_: bool) -> dict:
    """Median step ms per implementation at `shape`, their ratios, and the loss agreement."""
    hf = hf_model(shape)
    ours = our_model(shape, weights_from=hf)
    B, T = SHAPES[shape]["batch"]
    batch = torch.randint(0, SHAPES[shape]["hf"]["vocab_size"], (B, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text_vocab = SHAPES[shape]["hf"]["vocab_size"]
        logit_diff = (ours.eval()(batch, torch.zeros_like(batch)).logits[..., :text_vocab]
                      - hf.eval()(input_ids=batch).logits).abs().max().item()
    ours.train(), hf.train()
    runs = steps(ours, hf, batch)
    losses = {name: float(fn()) for name, fn in runs.items()}  # eager warm-up
    compile_s = {}
    if compile_:
        compiled_ours = our_model(shape, weights_from=hf)
        compile_backbone(compiled_ours, CompileConfig(enabled=True, dynamic=None))  # fixed shapes here
        compiled_hf = torch.compile(hf)
        compiled = steps(compiled_ours, compiled_hf, batch)
        runs["ours_compiled"], runs["hf_compiled"] = compiled["ours"], compiled["hf_grouped_mm"]
        for name in ("ours_compiled", "hf_compiled"):
            start = time.perf_counter()
            losses[name] = float(runs[name]())  # compiles
            runs[name]()
            compile_s[name] = round(time.perf_counter() - start, 1)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    ms = {name: statistics.median(v) for name, v in times.items()}
    best_hf = min(v for k, v in ms.items() if k.startswith("hf"))
    best_ours = min(v for k, v in ms.items() if k.startswith("ours"))
    result = {
        "tokens": B * T, "batch": [B, T], "params": sum(p.numel() for p in hf.parameters()),
        "ms": {k: round(v, 1) for k, v in ms.items()},
        "speedup_vs_best_hf": round(best_hf / best_ours, 3),
        "speedup_eager": round(ms["hf_grouped_mm"] / ms["ours"], 3),
        "max_text_logit_diff": float(f"{logit_diff:.2e}"),
        "loss": {k: round(v, 6) for k, v in losses.items()},
        "rounds": rounds,
    }
    if compile_:
        result["speedup_compiled"] = round(ms["hf_compiled"] / ms["ours_compiled"], 3)
        result["compile_and_first_steps_s"] = compile_s
    result["peak_rss_ratio"] = round(peak_rss(shape, "ours") / peak_rss(shape, "hf_grouped_mm"), 3)
    return result


def peak_rss(shape: str, impl: str) -> int:
    """Peak RSS (KiB) of a child process that builds `impl` at `shape` and runs two training steps."""
    command = [sys.executable, __file__, "--memory-child", impl, "--shapes", shape,
               "--threads", str(torch.get_num_threads())]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return int(out.stdout.strip().splitlines()[-1])


def memory_child(shape: str, impl: str) -> None:
    """Build one implementation with fresh weights, run two steps, print the peak RSS in KiB."""
    B, T = SHAPES[shape]["batch"]
    batch = torch.randint(0, SHAPES[shape]["hf"]["vocab_size"], (B, T))
    if impl == "ours":
        step = steps(our_model(shape), None, batch)["ours"]
    else:
        step = steps(None, hf_model(shape), batch)["hf_grouped_mm"]
    step()
    step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager implementations only")
    parser.add_argument("--memory-child", choices=["ours", "hf_grouped_mm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    host_malloc_reuse = reuse_freed_host_memory()  # as `python -m lightning_most`, for both implementations
    if args.memory_child:
        memory_child(args.shapes[0], args.memory_child)
        return
    result = {
        "torch": torch.__version__, "threads": args.threads, "dtype": "float32", "device": "cpu",
        "machine": platform.processor() or platform.machine(), "load_average_1min": os.getloadavg()[0],
        "host_malloc_reuse": host_malloc_reuse,
    }
    for shape in args.shapes:
        result[shape] = bench_shape(shape, args.rounds, args.compile)
        print(shape, result[shape], flush=True)
    result["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

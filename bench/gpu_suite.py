"""GPU suite: the figures a lent H100/H200 should produce, in one command (< 8 minutes), as JSON + Markdown.

    python bench/gpu_suite.py --out runs/gpu_suite            # on one GPU
    python bench/gpu_suite.py --smoke --out /tmp/gpu_suite    # CPU, tiny shapes, seconds (run by the tests)

Rows (one per line of the Markdown table, all in one JSON file):
1. `mamoe_layer/*`: one MoE layer, forward + backward, bf16, at DeepSeek-V2-Lite width (d 2048, 64 experts
   x 1408, top-6, 2 shared; 8192 tokens, half text half audio): ours (`MoEBlock`), transformers' experts
   with the same router and shared experts (`eager` loop and `grouped_mm`), and the equal-FLOPs dense floor
   (bench/mamoe_layer.py's references).
2. `train_step/{small,dsv2lite-2layer}/{eager,compiled}`: a stage-1 step (forward, loss, backward, AdamW)
   under bf16 autocast with fp32 weights, on ASR-like rows (half audio frames, half transcript tokens):
   the `small` preset, and a 2-layer model of DeepSeek-V2-Lite width (one dense, one MoE layer; full
   vocabulary). Tokens/s, MFU and peak memory; compiled = `compile_backbone` (inductor, per block).
3. `fsdp2_1gpu/small`: the same step with the backbone under FSDP2 (`parallel.apply_fsdp2`, bf16
   `MixedPrecisionPolicy`) in a 1-process group (nccl; gloo on CPU): the sharding overhead without
   any communication partner.
4. `vs_transformers/d1024/*`: issue 16 item 2's comparison on the GPU: a text-only training step (no optimizer)
   of transformers' DeepseekV2ForCausalLM (grouped_mm experts) and of our backbone converted from it, eager
   and compiled (bench/train_step_vs_transformers.py's d1024 shape: 16 experts x 704, top-2, on 8x1024
   tokens), bf16 autocast; `vs_best_hf` is transformers' fastest time over the row's.

MFU = model FLOPs per second / the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s; `--peak-tflops`).
Model FLOPs per trained token = 6 * P_active + 3 * L * H * (d_qk + d_v) * T, where P_active counts the
weights of every matrix multiplication a token passes through (attention and dense projections, the
router, top-k routed plus the shared experts, the text and audio heads, and the audio input projection
for the audio fraction of the tokens; not the embedding lookup), and the second term is causal
attention (QK^T and AV, 2 FLOPs per multiply-add, on average T/2 keys per query, times 3 for forward and
backward) over L layers of H heads at sequence length T. The zero padding of MLA's value heads is not
counted (model FLOPs, not hardware FLOPs).

With `--smoke` every row runs at tiny shapes on the CPU in fp32 (compiled rows with dynamo's `eager`
backend, which captures the graphs without generating kernels): it proves the script works end to
end, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import socket
import statistics
import time
import traceback
from pathlib import Path

import torch
from mamoe_layer import FloorMLP, LoopMoE
from torch import Tensor, nn

from lightning_most.backbone import MoSTBackbone, next_token_loss
from lightning_most.batch import IGNORE_INDEX
from lightning_most.compile import CompileConfig, compile_backbone
from lightning_most.config import ModelConfig, MoEConfig, build_config
from lightning_most.mamoe import ModalityAwareRouter, MoEBlock, RoutedExperts

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks (SXM parts) by a substring of the device name."""

FULL = {
    "mamoe_layer": {"d": 2048, "experts": 64, "inter": 1408, "top_k": 6, "shared": 2, "tokens": 8192},
    "train": {"small": ("small", {}, (8, 1024)), "dsv2lite-2layer": ("deepseek-v2-lite", {"num_layers": 2}, (4, 1024))},
    "vs_transformers": {"d1024": (8, 1024)},
    "warmup": 3, "steps": 10,
}
SMOKE = {
    "mamoe_layer": {"d": 64, "experts": 8, "inter": 32, "top_k": 2, "shared": 1, "tokens": 128},
    "train": {"small": ("tiny", {"num_layers": 2}, (2, 32)), "dsv2lite-2layer": ("tiny", {"num_layers": 2}, (2, 32))},
    "vs_transformers": {"tiny": (2, 32)},
    "warmup": 1, "steps": 1,
}


class Clock:
    """Wall time of device work: synchronises CUDA before reading the clock, and tracks peak memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        """Peak allocated GPU memory since `reset_peak` (None on CPU)."""
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)

    def median_ms(self, fn, warmup: int, steps: int) -> float:
        """Median wall ms of `fn()` over `steps` calls after `warmup` calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(steps):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


# ---- 1. the MoE layer ------------------------------------------------------------------------------
def mamoe_layer_rows(shape: dict, clock: Clock, dtype: torch.dtype, warmup: int, steps: int) -> list[dict]:
    """fwd+bwd ms of ours, transformers' experts (eager, grouped_mm) and the dense floor at one layer shape."""
    cfg = MoEConfig(num_routed_experts=shape["experts"], num_shared_experts=shape["shared"], top_k=shape["top_k"],
                    expert_intermediate_size=shape["inter"])
    torch.manual_seed(0)
    ours = MoEBlock(shape["d"], cfg)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.02)
    modules = {"ours": ours, "hf_eager": LoopMoE(ours, "eager"), "hf_grouped_mm": LoopMoE(ours, "grouped_mm"),
               "floor": FloorMLP(ours)}
    for m in modules.values():
        m.to(device=clock.device, dtype=dtype)
    T, device = shape["tokens"], clock.device
    h = torch.randn(1, T, shape["d"], device=device, dtype=dtype)
    modality = torch.cat([torch.zeros(T // 2), torch.ones(T - T // 2)]).long()[torch.randperm(T)][None].to(device)
    valid = torch.ones(1, T, dtype=torch.bool, device=device)

    def fwd_bwd(name: str):
        def run() -> None:
            x = h.detach().requires_grad_()
            y = ours(x, modality, valid)[0] if name == "ours" else modules[name](x, modality)
            y.backward(torch.ones_like(y))
        return run

    ms = {name: clock.median_ms(fwd_bwd(name), warmup, steps) for name in modules}
    label = f"d {shape['d']}, {shape['experts']}x{shape['inter']}, top-{shape['top_k']}, {T} tokens"
    return [{"row": f"mamoe_layer/{name}", "shape": label, "ms": round(v, 3), "vs_floor": round(v / ms["floor"], 3)}
            for name, v in ms.items()]


# ---- 2./3. training steps --------------------------------------------------------------------------
def asr_batch(config: ModelConfig, B: int, T: int, device: torch.device) -> dict[str, Tensor]:
    """B rows of T positions: the first half audio frames (modality 1), the rest transcript tokens (targets)."""
    g = torch.Generator().manual_seed(0)
    frames = T // 2
    ids = torch.randint(0, config.text_vocab_size, (B, T), generator=g)
    feature_mask = torch.zeros(B, T, dtype=torch.bool)
    feature_mask[:, :frames] = True
    labels = torch.full((B, T), IGNORE_INDEX)
    labels[:, frames - 1 : -1] = ids[:, frames:]  # each position predicts the next transcript token
    batch = {"input_ids": ids, "modality_ids": feature_mask.long(), "feature_mask": feature_mask, "labels": labels,
             "audio_features": torch.randn(B * frames, config.audio_feature_dim, generator=g)}
    return {k: v.to(device) for k, v in batch.items()}


def matmul_params_per_token(model: MoSTBackbone, audio_fraction: float) -> float:
    """P_active of the module docstring: weights of the matrix multiplications one token passes through."""
    moe = model.config.moe
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, RoutedExperts):
            total += module.gate_up_proj.numel() * moe.top_k / moe.num_routed_experts
            total += module.down_proj.numel() * moe.top_k / moe.num_routed_experts
        elif isinstance(module, ModalityAwareRouter):
            total += module.weight.numel()
        elif isinstance(module, nn.Linear) and not name.startswith("ctc_head"):
            share = audio_fraction if name.startswith(("audio_projector", "audio_encoder")) else 1.0
            total += module.weight.numel() * share
    if model.text_head is None:  # tied: the text head multiplies by the embedding rows
        total += model.config.text_vocab_size * model.config.hidden_size
    return total


def flops_per_token(model: MoSTBackbone, T: int, audio_fraction: float) -> float:
    """Model FLOPs of training one token at sequence length T (module docstring)."""
    a = model.config.attention
    d_qk, d_v = (a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim) if a.kind == "mla" else (a.head_dim, a.head_dim)
    attention = 3 * model.config.num_layers * a.num_heads * (d_qk + d_v) * T
    return 6 * matmul_params_per_token(model, audio_fraction) + attention


def train_step_fn(model: nn.Module, batch: dict[str, Tensor], clock: Clock, autocast: bool):
    """A closure running one stage-1 step: forward, loss (+ aux), backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=clock.device.type == "cuda")
    amp = torch.autocast(clock.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def step() -> None:
        with amp:
            out = model(batch["input_ids"], batch["modality_ids"], audio_features=batch["audio_features"],
                        feature_mask=batch["feature_mask"])
            loss = next_token_loss(out.logits, batch["labels"]) + out.aux_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_row(name: str, model: MoSTBackbone, batch: dict[str, Tensor], clock: Clock, args, run: dict) -> dict:
    """Tokens/s, MFU and peak memory of one training configuration."""
    B, T = batch["input_ids"].shape
    step = train_step_fn(model, batch, clock, autocast=not args.smoke)
    clock.reset_peak()
    start = time.perf_counter()
    step()  # first step: compiles, allocates optimizer state
    clock.sync()
    first_s = time.perf_counter() - start
    ms = clock.median_ms(step, run["warmup"], run["steps"])
    tokens_per_s = B * T / (ms / 1e3)
    flops = flops_per_token(model, T, audio_fraction=0.5)
    peak = peak_tflops(clock.device, args.peak_tflops)
    return {
        "row": name, "shape": f"{B}x{T} tokens, {model.num_parameters() / 1e6:.1f}M params "
                              f"({model.num_parameters(active=True) / 1e6:.1f}M active)",
        "ms": round(ms, 2), "tokens_per_s": round(tokens_per_s, 1), "first_step_s": round(first_s, 1),
        "tflops_per_s": round(tokens_per_s * flops / 1e12, 2),
        "mfu": None if peak is None else round(tokens_per_s * flops / (peak * 1e12), 4),
        "peak_mem_gib": clock.peak_gib(),
    }


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """Dense bf16 peak of the device in TFLOP/s (None on CPU or an unknown GPU)."""
    if override is not None or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAK_BF16_TFLOPS.items() if key in name), None)


def build(preset: str, overrides: dict, device: torch.device) -> MoSTBackbone:
    """A seeded backbone (fp32 weights) on `device`."""
    torch.manual_seed(0)
    return MoSTBackbone(build_config(preset, overrides)).to(device).train()


def compiled_train_row(name: str, model: MoSTBackbone, batch: dict[str, Tensor], clock: Clock, args, run: dict) -> dict:
    """`train_row` after `compile_backbone` (inductor per block; dynamo's `eager` backend with --smoke)."""
    compile_backbone(model, CompileConfig(enabled=True, backend="eager" if args.smoke else "inductor", dynamic=None))
    return train_row(name, model, batch, clock, args, run)


def train_rows(run: dict, clock: Clock, args) -> list[dict]:
    """Eager and compiled steps at each training shape; each row runs guarded, so a failed compile leaves the
    eager figure and the next shape."""
    rows: list[dict] = []
    for label, (preset, overrides, (B, T)) in run["train"].items():
        model = build(preset, overrides, clock.device)
        batch = asr_batch(model.config, B, T, clock.device)
        compiled = copy.deepcopy(model)
        for name, module, row_fn in ((f"train_step/{label}/eager", model, train_row),
                                     (f"train_step/{label}/compiled", compiled, compiled_train_row)):
            run_section(name, rows, row_fn, name, module, batch, clock, args, run)
        del model, compiled
        if clock.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def fsdp2_row(run: dict, clock: Clock, args) -> dict:
    """The `small` step with the backbone under FSDP2 in a one-process group."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_most.parallel import apply_fsdp2

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if clock.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh(clock.device.type, (1,), mesh_dim_names=("data_parallel",))
        preset, overrides, (B, T) = run["train"]["small"]
        model = build(preset, overrides, clock.device)
        apply_fsdp2(model, mesh, precision=None if args.smoke else "bf16-mixed")
        batch = asr_batch(model.config, B, T, clock.device)
        return train_row("fsdp2_1gpu/small", model, batch, clock, args, run)
    finally:
        dist.destroy_process_group()


# ---- 4. against transformers' model ---------------------------------------------------------------
def vs_transformers_rows(run: dict, clock: Clock, args) -> list[dict]:
    """Issue 16 item 2 on the GPU: a text-only training step (forward, loss, backward; no optimizer) of
    transformers' DeepseekV2ForCausalLM (grouped_mm experts) and of our backbone converted from it (same
    weights), eager and compiled, under bf16 autocast; `vs_best_hf` = fastest transformers ms / this row's ms
    (bench/train_step_vs_transformers.py's shapes and step, with a GPU-sized batch)."""
    from train_step_vs_transformers import SHAPES, hf_model, our_model, steps

    rows: list[dict] = []
    amp = torch.autocast(clock.device.type, dtype=torch.bfloat16) if not args.smoke else contextlib.nullcontext()
    for shape, (B, T) in run["vs_transformers"].items():
        hf = hf_model(shape)
        ours = our_model(shape, weights_from=hf).to(clock.device)
        hf = hf.to(clock.device)
        vocab = SHAPES[shape]["hf"]["vocab_size"]
        batch = torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(0)).to(clock.device)
        compiled_ours = copy.deepcopy(ours)
        compile_backbone(compiled_ours, CompileConfig(enabled=True, backend="eager" if args.smoke else "inductor",
                                                      dynamic=None))
        compiled_hf = torch.compile(hf, backend="eager" if args.smoke else "inductor")
        eager, compiled = steps(ours, hf, batch), steps(compiled_ours, compiled_hf, batch)
        impls = {"ours": eager["ours"], "ours_compiled": compiled["ours"], "hf_grouped_mm": eager["hf_grouped_mm"],
                 "hf_compiled": compiled["hf_grouped_mm"]}

        def timed(fn):
            def step() -> None:
                with amp:
                    fn()
            return step

        ms = {}
        for name, fn in impls.items():
            clock.reset_peak()
            ms[name] = (clock.median_ms(timed(fn), run["warmup"], run["steps"]), clock.peak_gib())
        best_hf = min(v for k, (v, _) in ms.items() if k.startswith("hf"))
        label = f"{B}x{T} tokens, {sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M params"
        rows += [{"row": f"vs_transformers/{shape}/{name}", "shape": label, "ms": round(v, 2),
                  "vs_best_hf": round(best_hf / v, 3), "tokens_per_s": round(B * T / (v / 1e3), 1), "peak_mem_gib": peak}
                 for name, (v, peak) in ms.items()]
        del hf, ours, compiled_ours, compiled_hf
        if clock.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- report ----------------------------------------------------------------------------------------
COLUMNS = ("row", "shape", "ms", "vs_floor", "vs_best_hf", "tokens_per_s", "tflops_per_s", "mfu", "peak_mem_gib", "first_step_s",
           "error")


def markdown(result: dict) -> str:
    """The rows as one Markdown table, headed by the device and settings."""
    lines = [f"# GPU suite: {result['device_name']}", "",
             f"torch {result['torch']}, {result['dtype']}, smoke={result['smoke']}, {result['wall_s']} s in all", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in result["rows"]:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def run_section(name: str, rows: list[dict], row_fn, *row_args) -> None:
    """Append a section's rows; a section that raises becomes one `error` row, and the next section still runs
    (a lent GPU's minutes are too few to lose every figure to one failure)."""
    start = time.perf_counter()
    print(f"[gpu_suite] {name} ...", flush=True)
    try:
        produced = row_fn(*row_args)
        rows += produced if isinstance(produced, list) else [produced]
    except Exception as error:  # noqa: BLE001 -- reported in the table, never swallowed
        traceback.print_exc()
        rows.append({"row": f"{name}/error", "error": f"{type(error).__name__}: {str(error)[:300]}"})
    print(f"[gpu_suite] {name} done in {time.perf_counter() - start:.1f} s", flush=True)


def write_report(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_suite.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu_suite", help="folder for gpu_suite.json and gpu_suite.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU in fp32 (seconds)")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default by name)")
    parser.add_argument("--sections", default="mamoe_layer,train_step,fsdp2_1gpu,vs_transformers",
                        help="comma-separated sections to run (default: all four)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda:0"))
    if device.type == "cpu" and not args.smoke:
        parser.error("no GPU here: give --smoke (tiny CPU shapes) or run on a GPU")
    sections = {
        "mamoe_layer": lambda: mamoe_layer_rows(run["mamoe_layer"], clock, dtype, run["warmup"], run["steps"]),
        "train_step": lambda: train_rows(run, clock, args),
        "fsdp2_1gpu": lambda: fsdp2_row(run, clock, args),
        "vs_transformers": lambda: vs_transformers_rows(run, clock, args),
    }
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    if unknown := sorted(set(chosen) - set(sections)):
        parser.error(f"--sections: unknown {unknown}; choose from {sorted(sections)}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run = SMOKE if args.smoke else FULL
    clock = Clock(device)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    start = time.perf_counter()
    result = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": str(dtype).removeprefix("torch."),
        "smoke": args.smoke, "peak_tflops": peak_tflops(device, args.peak_tflops), "wall_s": None, "rows": [],
    }
    out = Path(args.out)
    for name in chosen:
        run_section(name, result["rows"], sections[name])
        result["wall_s"] = round(time.perf_counter() - start, 1)
        write_report(out, result)  # after every section: a run cut short still leaves its figures
    print(markdown(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

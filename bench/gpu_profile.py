"""Where a GPU training step's time goes: torch.profiler over a few stage-1 steps, as tables and one JSON line.

    python bench/gpu_profile.py --out runs/gpu_profile                 # on one GPU: `small`, eager and compiled
    python bench/gpu_profile.py --smoke --out /tmp/gpu_profile         # CPU, tiny shapes (run by the tests)

For each configuration it prints the operators with the most device (self) time and writes them to
`<out>/profile_<name>.txt`. The last line is JSON: per configuration the wall ms per step, the device's busy ms
per step (the sum of kernel self times) and their ratio. A busy share well under 1 means the GPU waits on
the host (kernel launches, Python, synchronisations), which a bigger batch, CUDA graphs or compiling more of
the step would cure; near 1 the kernels themselves are the time.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from gpu_suite import FULL, SMOKE, Clock, asr_batch, build, train_step_fn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from lightning_most.compile import CompileConfig, compile_backbone


def device_busy_ms(prof, device_type: str) -> float:
    """Sum of the kernels' self time, in ms (kernels do not overlap on one stream): the table's "Self CUDA time
    total". Only the kernel events count: the operator rows repeat their kernels' time."""
    events = prof.key_averages()
    if device_type == "cuda":
        return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3
    return sum(e.self_cpu_time_total for e in events) / 1e3


def profile_steps(name: str, step, clock: Clock, steps: int, out: Path) -> dict:
    """Wall and device-busy ms per step over `steps` profiled steps (after two unprofiled warm-up steps)."""
    for _ in range(2):
        step()
    clock.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        clock.sync()
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    sort_by = "self_cuda_time_total" if clock.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=60)
    (out / f"profile_{name.replace('/', '_')}.txt").write_text(table)
    print(f"== {name}\n{table}", flush=True)
    busy_ms = device_busy_ms(prof, clock.device.type) / steps
    return {"name": name, "wall_ms_per_step": round(wall_ms, 2), "device_busy_ms_per_step": round(busy_ms, 2),
            "busy_share": round(busy_ms / wall_ms, 3)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu_profile")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU in fp32")
    parser.add_argument("--shape", default="small", help="a training shape of bench/gpu_suite.py (small, dsv2lite-2layer)")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda:0")
    if device.type == "cpu" and not args.smoke:
        parser.error("no GPU here: give --smoke (tiny CPU shapes) or run on a GPU")
    run = SMOKE if args.smoke else FULL
    preset, overrides, (B, T) = run["train"][args.shape]
    clock, out = Clock(device), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build(preset, overrides, device)
    batch = asr_batch(model.config, B, T, device)
    compiled = copy.deepcopy(model)
    compile_backbone(compiled, CompileConfig(enabled=True, backend="eager" if args.smoke else "inductor", dynamic=None))
    results = [profile_steps(f"{args.shape}/{label}", train_step_fn(m, batch, clock, autocast=not args.smoke), clock,
                             args.steps, out)
               for label, m in (("eager", model), ("compiled", compiled))]
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()

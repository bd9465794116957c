"""`python -m lightning_most grid`: run a base config under each ablation (and seed), then tabulate.

    python -m lightning_most grid --config conf/quickstart.yaml \
        --ablations conf/ablation/most.yaml conf/ablation/vanilla_moe.yaml conf/ablation/no_shared.yaml \
        conf/ablation/dense.yaml --seeds 0 1 --out_dir runs/grid -- --trainer.max_steps 500

Each run is an ordinary `fit` in its own process, logging to `<out_dir>/<ablation>-seed<k>/`; the
arguments after `--` go to every run. The table (Markdown and JSON in out_dir) holds the last
logged value of every `val/` scalar of each run, read back from its TensorBoard events.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def run_commands(config: str, ablations: list[str], seeds: list[int], out_dir: Path, extra: list[str]) -> dict[str, list[str]]:
    """The fit command line of every (ablation, seed) run, keyed by run name."""
    runs = {}
    for ablation in ablations:
        for seed in seeds:
            name = f"{Path(ablation).stem}-seed{seed}"
            root = out_dir / name
            runs[name] = [
                sys.executable, "-m", "lightning_most", "fit", "--config", config, "--config", ablation,
                "--seed_everything", str(seed), "--trainer.default_root_dir", str(root),
                "--trainer.logger.init_args.save_dir", str(root), "--trainer.logger.init_args.name", "tensorboard",
                "--trainer.logger.init_args.version", "0", *extra,
            ]
    return runs


def final_metrics(log_dir: Path) -> dict[str, float]:
    """Last value of every `val/` scalar in a run's TensorBoard events."""
    events = EventAccumulator(str(log_dir)).Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("val/")}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """One row per run, one column per metric."""
    metrics = sorted({m for r in results.values() for m in r})
    lines = ["| run | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[m]:.4f}" if m in r else "-" for m in metrics) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Parse the grid's arguments, run every fit, write and print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="lightning_most grid", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="base config (e.g. conf/quickstart.yaml)")
    parser.add_argument("--ablations", nargs="+", required=True, help="YAMLs holding only the keys each run changes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out_dir", default="runs/grid")
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    for path in [args.config, *args.ablations]:
        if not Path(path).is_file():
            parser.error(f"config file {path} does not exist")
    out_dir = Path(args.out_dir)
    runs = run_commands(args.config, args.ablations, args.seeds, out_dir, extra)
    results: dict[str, dict[str, float]] = {}
    for name, cmd in runs.items():
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        if subprocess.run(cmd, check=False).returncode != 0:
            print(f"grid: run {name} failed; its log is in {out_dir / name}", file=sys.stderr)
            results[name] = {}
            continue
        results[name] = final_metrics(out_dir / name / "tensorboard" / "version_0")
    if not args.dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "grid.json").write_text(json.dumps(results, indent=2) + "\n")
        table = markdown_table(results)
        (out_dir / "grid.md").write_text(table + "\n")
        print(table)
    return results

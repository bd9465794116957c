"""`python -m lightning_most grid`: variants x sweeps x seeds of one base config, trained, evaluated, aggregated.

    python -m lightning_most grid --config conf/quickstart.yaml \
        --variants conf/ablation/dense.yaml conf/ablation/vanilla_moe.yaml conf/ablation/most.yaml \
        conf/ablation/no_shared.yaml --sweep model.init_args.backbone_overrides.moe.num_shared_experts=1,2 \
        --seeds 0 1 2 --jobs 2 --out_dir runs/grid -- --trainer.max_steps 800

A variant is a YAML of the keys it changes, or NAME=A.yaml+B.yaml for several (e.g. a variant and a
partition written by `python -m lightning_most partition`). `--sweep KEY=V1,V2` crosses every variant
with each value (the variant is then named `variant+KEY_TAIL=V`). Each run, one (variant, seed):

1. `fit --config BASE --config VARIANT... --seed_everything SEED [sweep values] [args after --]`, logging
   to `<out_dir>/runs/<variant>/seed<SEED>/tensorboard/version_0` (the base config must save last.ckpt);
2. `evaluate` of its last checkpoint on `--suites` (ASR WER with the configured decoding, TTS WER by the
   judge, spoken-LM pair accuracy, text perplexity on held-out text), and the ASR suite again with
   `--no_word_lm` (the model alone, without the external word LM);
3. `result.json` in the run folder: the flat metrics (`asr/<set>/wer`, `asr_model_alone/<set>/wer`, ...,
   and the last value of every `val/` scalar). A run with a `result.json` is finished: re-running the
   grid skips it. A failed run is counted and named, with its log, never dropped silently.

Runs go to a local pool (`--jobs N` processes at once, `--threads` torch threads each) or, with
`--launcher slurm`, to SLURM through submitit (`--launcher submitit_local` runs submitit's local
executor, `debug` its in-process one: both for testing). At the end every metric is aggregated per
variant over seeds: mean and 95% confidence half-width (Student t with n-1 degrees of freedom;
undefined for one seed), written as `grid.md` (Markdown), `grid.json`, `grid.png` (one panel per
metric, error bars) and TensorBoard (`<out_dir>/tensorboard`: the figure and per-variant scalars).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

LAUNCHERS = ("local", "slurm", "submitit_local", "debug")
DEFAULT_SUITES = "asr,tts,spoken_lm,text"
RESULT_FILE = "result.json"
HEADLINE = ("asr/", "asr_model_alone/", "tts/", "text/", "spoken_lm/")
"""Metric prefixes shown in grid.md (grid.json holds every metric)."""


@dataclass
class Variant:
    """A named list of config files that each run of the variant adds to the base config."""

    name: str
    configs: list[str]
    args: list[str] = field(default_factory=list)
    """Sweep values as command-line overrides."""


@dataclass
class EvaluationSpec:
    """How each run is evaluated (the `evaluate` command's options)."""

    suites: str = DEFAULT_SUITES
    corpus_dir: str | None = None
    spoken_lm_root: str | None = None
    text_jsonl: str | None = None
    max_utterances: int | None = None
    miniature_pairs: int | None = None
    judge: str = "whisper"
    batch_size: int = 8
    cache_dir: str | None = None


@dataclass
class RunSpec:
    """One (variant, seed) run: its folder and its commands."""

    variant: str
    seed: int
    run_dir: str
    fit: list[str]
    evaluations: dict[str, list[str]]
    """evaluate commands by result prefix ("" = the suites' own names, "asr_model_alone")."""
    threads: int = 1


def parse_variants(items: list[str]) -> list[Variant]:
    """Variants from `PATH.yaml` or `NAME=A.yaml+B.yaml` items; every file must exist."""
    variants = []
    for item in items:
        name, _, files = item.rpartition("=") if "=" in item else ("", "", item)
        configs = files.split("+")
        name = name or "+".join(Path(c).stem for c in configs)
        for config in configs:
            if not Path(config).is_file():
                raise ValueError(f"variant {name!r}: config file {config} does not exist")
        variants.append(Variant(name, configs))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ, got {names}: name them with NAME=FILE")
    return variants


def apply_sweeps(variants: list[Variant], sweeps: list[str]) -> list[Variant]:
    """Every variant crossed with every `KEY=V1,V2` sweep value (in order, sweeps crossed with each other)."""
    for sweep in sweeps:
        key, _, values = sweep.partition("=")
        if not key or not values:
            raise ValueError(f"--sweep {sweep!r}: write KEY=V1,V2 (e.g. model.init_args.optimizer.lr=1e-3,2e-3)")
        tail = key.rsplit(".", 1)[-1]
        variants = [
            Variant(f"{v.name}+{tail}={value}", v.configs, [*v.args, f"--{key}", value])
            for v in variants for value in values.split(",")
        ]
    return variants


def fit_command(base: str, variant: Variant, seed: int, run_dir: Path, extra: list[str]) -> list[str]:
    """The `fit` command line of one run (logs and checkpoints under run_dir/tensorboard/version_0)."""
    configs = [arg for config in [base, *variant.configs] for arg in ("--config", config)]
    return [
        sys.executable, "-m", "lightning_most", "fit", *configs, "--seed_everything", str(seed), *variant.args,
        "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.logger.init_args.name", "tensorboard", "--trainer.logger.init_args.version", "0", *extra,
    ]


CHECKPOINT = "{checkpoint}"
"""Placeholder of the evaluate commands for the fit's last checkpoint, found when the fit has ended."""


def evaluate_commands(run_dir: Path, spec: EvaluationSpec) -> dict[str, list[str]]:
    """The evaluate commands of one run: the suites, and ASR without the word LM when asr is among them."""
    options = {"--corpus_dir": spec.corpus_dir, "--spoken_lm_root": spec.spoken_lm_root, "--text_jsonl": spec.text_jsonl,
               "--max_utterances": spec.max_utterances, "--miniature_pairs": spec.miniature_pairs,
               "--judge": spec.judge, "--batch_size": spec.batch_size, "--cache_dir": spec.cache_dir}
    common = [arg for key, value in options.items() if value is not None for arg in (key, str(value))]
    base = [sys.executable, "-m", "lightning_most", "evaluate", "--ckpt", CHECKPOINT, *common]
    commands = {"": [*base, "--suites", spec.suites, "--out_dir", str(run_dir / "eval")]}
    if "asr" in spec.suites.split(","):
        commands["asr_model_alone"] = [*base, "--suites", "asr", "--no_word_lm", "--out_dir", str(run_dir / "eval_model_alone")]
    return commands


def plan_runs(base: str, variants: list[Variant], seeds: list[int], out_dir: Path, extra: list[str],
              evaluation: EvaluationSpec, threads: int) -> list[RunSpec]:
    """Every (variant, seed) run of the grid, in variant-major order."""
    runs = []
    for variant in variants:
        for seed in seeds:
            run_dir = out_dir / "runs" / variant.name / f"seed{seed}"
            runs.append(RunSpec(variant.name, seed, str(run_dir), fit_command(base, variant, seed, run_dir, extra),
                                evaluate_commands(run_dir, evaluation), threads))
    return runs


def final_val_metrics(log_dir: Path) -> dict[str, float]:
    """Last value of every `val/` scalar in a run's TensorBoard events (empty when there are none)."""
    if not log_dir.is_dir():
        return {}
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 1, "histograms": 1}).Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("val/")}


def report_metrics(report_file: Path, prefix: str = "") -> dict[str, float]:
    """Flat `suite/metric` values of an evaluation.json, the suite's first part replaced by `prefix` if given."""
    metrics = json.loads(report_file.read_text())["metrics"]
    flat = {}
    for suite, values in metrics.items():
        name = suite if not prefix else f"{prefix}/{suite.split('/', 1)[1]}"
        flat.update({f"{name}/{metric}": float(value) for metric, value in values.items()})
    return flat


def _run_logged(command: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[2:5])}` exited with {done.returncode}; see {log}")


def last_checkpoint(run_dir: Path) -> Path:
    """The newest `last.ckpt` a fit wrote under run_dir (FileNotFoundError naming the log if there is none)."""
    found = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"the fit wrote no last.ckpt under {run_dir}: keep a ModelCheckpoint(save_last=True) in the base config; "
            f"see {run_dir / 'run.log'}"
        )
    return found[-1]


def run_one(spec: RunSpec) -> dict:
    """Train and evaluate one run unless its result.json exists; return that result (read or written)."""
    run_dir = Path(spec.run_dir)
    result_file = run_dir / RESULT_FILE
    if result_file.is_file():
        return {**json.loads(result_file.read_text()), "skipped": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "run.log"
    start = time.perf_counter()
    _run_logged(spec.fit, log, spec.threads)
    checkpoint = last_checkpoint(run_dir)
    metrics = {}
    for prefix, command in spec.evaluations.items():
        command = [str(checkpoint) if arg == CHECKPOINT else arg for arg in command]
        _run_logged(command, log, spec.threads)
        out_dir = Path(command[command.index("--out_dir") + 1])
        metrics.update(report_metrics(out_dir / "evaluation.json", prefix))
    metrics.update(final_val_metrics(run_dir / "tensorboard" / "version_0"))
    result = {"variant": spec.variant, "seed": spec.seed, "metrics": metrics,
              "seconds": round(time.perf_counter() - start, 1)}
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "skipped": False}


def _safe_run(spec: RunSpec) -> dict:
    try:
        return run_one(spec)
    except (RuntimeError, OSError, ValueError, KeyError) as error:  # reported with its log; the other runs go on
        return {"variant": spec.variant, "seed": spec.seed, "error": str(error)}


def launch(runs: list[RunSpec], launcher: str, jobs: int, out_dir: Path, slurm: dict) -> list[dict]:
    """Run every spec on the chosen launcher; one result dict per run (with "error" for a failed one)."""
    if launcher == "local":
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(_safe_run, runs))
    import submitit

    cluster = {"slurm": "slurm", "submitit_local": "local", "debug": "debug"}[launcher]
    executor = submitit.AutoExecutor(folder=str(out_dir / "submitit"), cluster=cluster)
    executor.update_parameters(**slurm)
    submitted = [executor.submit(_safe_run, spec) for spec in runs]
    return [job.result() for job in submitted]


def mean_ci95(values: list[float]) -> dict[str, float]:
    """Mean, 95% confidence half-width (Student t, n-1 degrees of freedom; NaN for n < 2) and n."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": math.nan, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci95": float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), "n": n}


def aggregate(results: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {metric: mean_ci95 over the seeds that have it}} of the finished runs."""
    values: dict[str, dict[str, list[float]]] = {}
    for result in results:
        if "error" in result:
            continue
        for metric, value in result["metrics"].items():
            if not metric.rsplit("/", 1)[-1].startswith("num_"):
                values.setdefault(result["variant"], {}).setdefault(metric, []).append(value)
    return {variant: {m: mean_ci95(v) for m, v in sorted(metrics.items())} for variant, metrics in values.items()}


def _cell(stat: dict[str, float]) -> str:
    spread = "" if math.isnan(stat["ci95"]) else f" ± {stat['ci95']:.3g}"
    return f"{stat['mean']:.4g}{spread} (n={stat['n']})"


def markdown_table(summary: dict[str, dict[str, dict[str, float]]], headline: tuple[str, ...] = HEADLINE) -> str:
    """One row per metric (those starting with a `headline` prefix), one column per variant: mean ± 95% CI (n)."""
    variants = list(summary)
    metrics = sorted({m for stats in summary.values() for m in stats if m.startswith(headline)})
    lines = ["| metric | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for metric in metrics:
        cells = [_cell(summary[v][metric]) if metric in summary[v] else "-" for v in variants]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_figure(summary: dict[str, dict[str, dict[str, float]]], headline: tuple[str, ...] = HEADLINE):
    """A matplotlib figure: one panel per headline metric, the variants' means with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary)
    metrics = sorted({m for stats in summary.values() for m in stats if m.startswith(headline)}) or ["(no metrics)"]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        stats = [summary[v].get(metric) for v in variants]
        means = [s["mean"] if s else math.nan for s in stats]
        errors = [0.0 if not s or math.isnan(s["ci95"]) else s["ci95"] for s in stats]
        ax.errorbar(range(len(variants)), means, yerr=errors, fmt="o", capsize=4)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def write_outputs(results: list[dict], out_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """grid.json, grid.md, grid.png and TensorBoard (figure + per-variant means) in out_dir; return the summary."""
    from torch.utils.tensorboard import SummaryWriter

    summary = aggregate(results)
    failed = [r for r in results if "error" in r]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grid.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=2, default=str) + "\n")
    table = markdown_table(summary)
    if failed:
        table += f"\n{len(failed)} of {len(results)} runs failed (not in the table):\n" + "".join(
            f"- {r['variant']} seed {r['seed']}: {r['error']}\n" for r in failed
        )
    (out_dir / "grid.md").write_text(table)
    figure = summary_figure(summary)
    figure.savefig(out_dir / "grid.png", dpi=120)
    with SummaryWriter(str(out_dir / "tensorboard")) as writer:
        writer.add_figure("grid/summary", figure)
        for variant, stats in summary.items():
            for metric, stat in stats.items():
                writer.add_scalar(f"grid/{metric}/{variant}", stat["mean"])
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The grid's argument parser (the arguments after `--` go to every fit)."""
    parser = argparse.ArgumentParser(prog="python -m lightning_most grid", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="base config (e.g. conf/quickstart.yaml)")
    parser.add_argument("--variants", "--ablations", nargs="+", required=True,
                        help="PATH.yaml or NAME=A.yaml+B.yaml: the keys each variant changes")
    parser.add_argument("--sweep", action="append", default=[], help="KEY=V1,V2: cross every variant with these values")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out_dir", default="runs/grid")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (local launcher)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local")
    parser.add_argument("--slurm", default="{}", help='submitit parameters as JSON, e.g. {"slurm_partition": "gpu", '
                        '"timeout_min": 120, "gpus_per_node": 1, "cpus_per_task": 8}')
    parser.add_argument("--dry_run", action="store_true", help="print the commands without running them")
    ev = parser.add_argument_group("evaluation of each run (the evaluate command's options)")
    ev.add_argument("--suites", default=DEFAULT_SUITES)
    for name in ("corpus_dir", "spoken_lm_root", "text_jsonl", "judge", "cache_dir"):
        ev.add_argument(f"--{name}", default=getattr(EvaluationSpec, name))
    for name in ("max_utterances", "miniature_pairs", "batch_size"):
        ev.add_argument(f"--{name}", type=int, default=getattr(EvaluationSpec, name))
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Plan, run (skipping finished runs) and aggregate the grid; print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"config file {args.config} does not exist")
    try:
        variants = apply_sweeps(parse_variants(args.variants), args.sweep)
        slurm = json.loads(args.slurm)
    except (ValueError, json.JSONDecodeError) as error:
        parser.error(str(error))
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    out_dir = Path(args.out_dir)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    evaluation = EvaluationSpec(**{k: getattr(args, k) for k in asdict(EvaluationSpec())})
    evaluation.cache_dir = evaluation.cache_dir or str(out_dir / "cache")
    runs = plan_runs(args.config, variants, args.seeds, out_dir, extra, evaluation, threads)
    if args.dry_run:
        for run in runs:
            print(" ".join(run.fit))
            for command in run.evaluations.values():
                print(" ".join(command))
        return {}
    finished = sum((Path(r.run_dir) / RESULT_FILE).is_file() for r in runs)
    print(f"grid: {len(runs)} runs ({len(variants)} variants x {len(args.seeds)} seeds), {finished} already finished",
          flush=True)
    results = launch(runs, args.launcher, args.jobs, out_dir, slurm)
    summary = write_outputs(results, out_dir)
    print((out_dir / "grid.md").read_text(), end="")
    failed = sum("error" in r for r in results)
    print(f"grid: {len(results) - failed} runs finished ({sum(r.get('skipped', False) for r in results)} skipped as done), "
          f"{failed} failed; wrote {out_dir / 'grid.md'}, grid.json, grid.png, TensorBoard {out_dir / 'tensorboard'}")
    return summary

"""Kill test: a tiny fit is SIGKILLed N times at seeded random moments and restarted with the same command.

    PYTHONPATH=. .venv/bin/python bench/kill_test.py --kills 20 --seed 0 --out /tmp/kill_test

The run is `tests/tiny_fit.py`'s (tiny backbone, 36-utterance corpus, a prefetching loader worker,
`RunCheckpoint` every `--checkpoint_every` steps with `ckpt_path: last`). First it runs once without
interruption (the reference). Then the same command is started, killed, started again, ... Each kill
is drawn (seeded) from three kinds:

- `step`: after a random step still to train, plus a random 0-0.5 s (mid-step, mid-fetch);
- `write`: the moment a checkpoint is being written (`<name>.partial` exists in the folder);
- `startup`: a random moment before the first step (loading, resuming, prefetching).

After the N-th kill the run is left to finish. Checks: it ends at the reference's final step; its
final weights and AdamW state equal the reference's bit for bit; the steps of the surviving lineage
(for each step, the last process that trained it) are 1..max_steps with the reference's loss and cut
ids, so no step was skipped or left in twice and no sample was lost or seen twice; every restart
resumed from the last whole checkpoint (none was torn). Prints a Markdown summary and writes
`<out>/kill_test.json`; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.embedded import prepare_embedded_corpus
from lightning_most.fault_tolerance import STAGING_SUFFIX
from lightning_most.safe_loading import load_checkpoint
from tests.tiny_fit import CORPUS, fit_command, read_steps, subprocess_env, write_config

KINDS = ("step", "write", "startup")


def _run_to_end(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False)


def _writing(folder: Path, since: float) -> bool:
    """Whether this process is writing a checkpoint: a `.partial` in `folder` modified after `since` (a killed
    write's leftover is older)."""
    try:
        return any(p.name.endswith(STAGING_SUFFIX) and p.stat().st_mtime >= since for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # the folder, or a .partial renamed while we looked
        return False


def _kill_once(command: list[str], root: Path, kind: str, rng: random.Random, max_steps: int) -> dict:
    """Start the run, kill it as `kind` says (unless it ends first); what happened."""
    folder = root / "checkpoints"
    done = len(read_steps(root))
    start_step = max((r["step"] for r in read_steps(root)), default=0)
    target = rng.randint(min(start_step, max_steps - 1), max_steps - 1) if kind == "step" else None
    delay = rng.uniform(0.0, 0.5)
    started = time.time()
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    began = time.monotonic()
    landed = None
    while process.poll() is None:
        steps = read_steps(root)[done:]
        writing = _writing(folder, started)
        if kind == "startup" and (steps or time.monotonic() - began > delay * 20):
            landed = "startup" if not steps else "step"
        elif kind == "step" and steps and steps[-1]["step"] >= target:
            time.sleep(delay)
            landed = "step"
        elif kind == "write" and writing:
            landed = "write"
        if landed:
            writing = _writing(folder, started)
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005 if kind == "write" else 0.05)
    _, err = process.communicate()
    new = read_steps(root)[done:]
    return {
        "kind": kind, "landed": landed if landed else "finished", "during_write": bool(landed and writing),
        "returncode": process.returncode, "first_step": new[0]["step"] if new else None,
        "last_step": new[-1]["step"] if new else None, "seconds": round(time.monotonic() - began, 1),
        "fell_back": "is torn or corrupt" in err, "error": err[-2000:] if process.returncode not in (0, -9) else "",
    }


def _no_gap(attempts: list[dict]) -> bool:
    """Whether every process started at most one step after the furthest step trained before it."""
    reached = 0
    for attempt in attempts:
        if attempt["first_step"] is not None:
            if attempt["first_step"] > reached + 1:
                return False
            reached = max(reached, attempt["last_step"])
    return True


def _lineage(records: list[dict]) -> dict[int, dict]:
    """For each step, the record of the last process that trained it."""
    lineage: dict[int, dict] = {}
    for record in records:
        lineage[record["step"]] = record
    return lineage


def _states_equal(a: dict, b: dict) -> tuple[bool, float]:
    """(bitwise equal, largest absolute difference) of two checkpoints' weights and optimizer states."""
    tensors_a = {**{f"w.{k}": v for k, v in a["state_dict"].items()}, **_optimizer_tensors(a)}
    tensors_b = {**{f"w.{k}": v for k, v in b["state_dict"].items()}, **_optimizer_tensors(b)}
    if tensors_a.keys() != tensors_b.keys():
        return False, float("inf")
    diff = max((float((tensors_a[k].double() - tensors_b[k].double()).abs().max()) for k in tensors_a if tensors_a[k].numel()),
               default=0.0)
    return all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a), diff


def _optimizer_tensors(checkpoint: dict) -> dict:
    state = checkpoint["optimizer_states"][0]["state"]
    return {f"opt.{p}.{name}": t for p, s in state.items() for name, t in s.items() if isinstance(t, torch.Tensor)}


def main(argv: list[str] | None = None) -> int:
    """Run the kill test; 0 when every check passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--checkpoint_every", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill_test"))
    parser.add_argument("--corpus_dir", type=Path, help="a built tiny corpus (default: <out>/corpus, built if missing)")
    args = parser.parse_args(argv)
    corpus = args.corpus_dir or args.out / "corpus"
    prepare_embedded_corpus(corpus, CORPUS)
    rng = random.Random(args.seed)
    began = time.monotonic()

    reference_root = args.out / "reference"
    reference_command = fit_command(write_config(corpus, reference_root, args.max_steps, args.checkpoint_every))
    ref = _run_to_end(reference_command, timeout=1800)
    if ref.returncode != 0:
        print(ref.stderr[-3000:], file=sys.stderr)
        return 1
    reference_seconds = time.monotonic() - began

    root = args.out / "killed"
    command = fit_command(write_config(corpus, root, args.max_steps, args.checkpoint_every))
    attempts = []
    while sum(a["landed"] != "finished" for a in attempts) < args.kills:
        attempt = _kill_once(command, root, rng.choice(KINDS), rng, args.max_steps)
        attempts.append(attempt)
        print(json.dumps(attempt), flush=True)
        if attempt["landed"] == "finished" or attempt["error"]:
            break
    final = _run_to_end(command, timeout=1800) if not attempts or attempts[-1]["landed"] != "finished" else None
    finished = final is None or final.returncode == 0

    reference = read_steps(reference_root)
    killed = read_steps(root)
    lineage = _lineage(killed)
    expected = {r["step"]: r for r in reference}
    ref_ckpt = load_checkpoint(reference_root / "checkpoints" / "last.ckpt")
    got_ckpt = load_checkpoint(root / "checkpoints" / "last.ckpt")
    bitwise, max_diff = _states_equal(ref_ckpt, got_ckpt)
    checks = {
        "finished with status 0": finished,
        "same final step": got_ckpt["global_step"] == ref_ckpt["global_step"] == args.max_steps,
        "steps 1..max_steps, none skipped": sorted(lineage) == list(range(1, args.max_steps + 1)),
        "same loss at every step (bitwise)": all(lineage[s]["loss"] == expected[s]["loss"] for s in expected),
        "same batch (cut ids) at every step": all(lineage[s]["cut_ids"] == expected[s]["cut_ids"] for s in expected),
        "no sample lost or seen twice": Counter(c for r in lineage.values() for c in r["cut_ids"])
        == Counter(c for r in reference for c in r["cut_ids"]),
        "each restart continued at or before the step the killed runs reached (no gap)": _no_gap(attempts),
        "final weights + AdamW state bitwise equal": bitwise,
        "no restart needed a fallback (no torn checkpoint)": not any(a["fell_back"] for a in attempts),
    }
    landed = Counter(a["landed"] for a in attempts)
    summary = {
        "kills": sum(a["landed"] != "finished" for a in attempts), "landed": dict(landed),
        "kills_during_checkpoint_write": sum(a["during_write"] for a in attempts),
        "steps_retrained": len(killed) - args.max_steps, "max_abs_weight_diff": max_diff,
        "reference_seconds": round(reference_seconds), "total_seconds": round(time.monotonic() - began),
        "checks": checks, "attempts": attempts,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill_test.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{summary['kills']} SIGKILLs (seed {args.seed}, {args.max_steps} steps, checkpoint every "
          f"{args.checkpoint_every}): {dict(landed)}, {summary['kills_during_checkpoint_write']} while a checkpoint "
          f"was being written; {summary['steps_retrained']} steps trained again after kills; "
          f"{summary['total_seconds']} s in all (reference run {summary['reference_seconds']} s)\n")
    print("| check | result |\n|---|---|")
    for name, ok in checks.items():
        print(f"| {name} | {'pass' if ok else 'FAIL'} |")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

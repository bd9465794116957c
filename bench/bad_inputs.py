"""What a user sees for bad input at each entry point: exit status, traceback or not, and the error line.

    PYTHONPATH=. .venv/bin/python bench/bad_inputs.py --ckpt runs/quickstart/checkpoints/last.ckpt --work /tmp/bad

Every case runs `python -m lightning_most ...`'s `main` in this process (a process per case costs minutes of
imports on a busy machine); an exception that escapes `main` is what a process would print as a traceback.
Prints a Markdown table (the one in `bench/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import soundfile


def _write_audio(work: Path) -> dict[str, Path]:
    """The audio cases: empty, 1 s silence, 2 s 8 kHz stereo noise, 1 hour of quiet noise, a text file, a missing file."""
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "empty WAV (0 samples)": (np.zeros(0, dtype=np.float32), 16000),
        "1 s of silence": (np.zeros(16000, dtype=np.float32), 16000),
        "2 s, 8 kHz, stereo": (0.1 * rng.standard_normal((16000, 2)).astype(np.float32), 8000),
        "1 hour": (0.01 * rng.standard_normal(3600 * 16000).astype(np.float32), 16000),
    }
    paths = {}
    for i, (name, (samples, rate)) in enumerate(files.items()):
        paths[name] = work / f"audio{i}.wav"
        soundfile.write(str(paths[name]), samples, rate, subtype="PCM_16")
    paths["not audio (a text file named .wav)"] = work / "text.wav"
    paths["not audio (a text file named .wav)"].write_text("this is not audio\n")
    paths["missing file"] = work / "missing.wav"
    return paths


def _run(argv: list[str]) -> tuple[int, bool, str, float]:
    """Run `python -m lightning_most ARGV` in this process: (exit status, whether an exception escaped (a
    traceback), the first line on stderr (else stdout), seconds)."""
    from lightning_most.main import main

    began = time.monotonic()
    err, out = io.StringIO(), io.StringIO()
    status, escaped = 0, False
    argv0, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this script's arguments
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception as error:  # noqa: BLE001 (any exception escaping main is what a process prints as a traceback)
            status, escaped = 1, True
            print(f"{type(error).__name__}: {error}", file=err)
    sys.argv = argv0
    lines = [line for line in err.getvalue().splitlines() if line.strip() and not line.startswith(("INFO", "Seed set"))]
    if escaped:
        lines = lines[-1:] + lines[:-1]  # the exception's own message first
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if status and errors and errors[0] > 0:  # e.g. jsonargparse: usage lines, then the error
        first = f"(line {errors[0] + 1}) {lines[errors[0]]}"
    else:
        first = lines[0] if status and lines else (out.getvalue().strip().splitlines() or [""])[0]
    return status, escaped, first[:220], time.monotonic() - began


def main(argv: list[str] | None = None) -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a trained stage checkpoint")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bad_inputs"))
    args = parser.parse_args(argv)
    ckpt = ["--ckpt", args.ckpt]
    cases = [(f"transcribe: {name}", ["transcribe", *ckpt, str(path)]) for name, path in _write_audio(args.work).items()]
    out = str(args.work / "speech.wav")
    cases += [
        ("synthesize: empty text", ["synthesize", *ckpt, "--text", " ", "--out", out]),
        ("synthesize: 50,000 characters", ["synthesize", *ckpt, "--text", "speech " * 7143, "--out", out]),
        ("synthesize: non-Latin script", ["synthesize", *ckpt, "--text", "Привет, мир. 你好，世界。", "--out", out]),
        ("fit: unknown key", ["fit", "--config", "conf/quickstart.yaml", "--model.init_args.bogus", "1", "--print_config"]),
        ("fit: wrong type", ["fit", "--config", "conf/quickstart.yaml", "--trainer.max_steps", "many", "--print_config"]),
        ("fit: impossible combination (ctc_warmup_steps without ctc_weight)",
         ["fit", "--config", "conf/quickstart.yaml", "--model.init_args.ctc_warmup_steps", "5",
          "--model.init_args.ctc_weight", "0", "--data.init_args.corpus_dir", str(args.work / "no_corpus")]),
    ]
    print("| input | exit status | traceback | what the user saw (first line) | seconds |\n|---|---|---|---|---|")
    for name, case in cases:
        status, traceback, first, seconds = _run(case)
        print(f"| {name} | {status} | {'yes' if traceback else 'no'} | {first.replace('|', '/')} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

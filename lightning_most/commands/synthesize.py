"""`python -m lightning_most synthesize --ckpt CKPT --text "..." --out x.wav [--vocoder DIR]`: text to speech."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.waveforms import write_wav
from lightning_most.commands.common import (
    CommandError,
    add_checkpoint_arguments,
    add_synthesis_arguments,
    load_inference,
    run,
)


def build_parser() -> argparse.ArgumentParser:
    """The `synthesize` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_most synthesize",
        description="Speak a text with a trained checkpoint: text -> units (the model) -> 16 kHz WAV (the vocoder).",
    )
    add_checkpoint_arguments(parser)
    add_synthesis_arguments(parser)
    parser.add_argument("--text", required=True, help="the text to speak")
    parser.add_argument("--out", required=True, help="the WAV file to write (16 kHz, mono, 16-bit)")
    return parser


def synthesize(args: argparse.Namespace) -> None:
    """Write the speech of `args.text` to `args.out` and print its unit count and duration."""
    out = Path(args.out)
    if out.is_dir():
        raise CommandError(f"--out {out} is a folder; give a file name such as {out / 'speech.wav'}")
    if not args.text.strip():
        raise CommandError("--text is empty; give the text to speak")
    inference = load_inference(args)
    module = inference.module
    tokens = len(module.tokenizer.encode(args.text))
    room = module.config.max_position - module.hparams.tts_max_new_tokens - 8  # 8: the prompt's special tokens
    if tokens > room:
        raise CommandError(
            f"--text is {tokens} tokens long; this model speaks at most {max(room, 0)} at once (its "
            f"{module.config.max_position} positions hold the text and up to {module.hparams.tts_max_new_tokens} "
            "units): split the text into sentences and synthesize each"
        )
    units = inference.synthesize_units([args.text])[0]
    waveform = inference.vocode([units])[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, waveform)
    print(f"wrote {out}: {units.numel()} units, {waveform.numel()} samples ({waveform.numel() / SAMPLE_RATE:.2f} s)")


def main(argv: list[str] | None = None) -> None:
    """Run `synthesize` on `argv`."""
    run(build_parser(), synthesize, argv)

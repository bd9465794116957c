"""`python -m lightning_most transcribe --ckpt CKPT x.wav [y.wav ...]`: speech to text, one line per file."""

from __future__ import annotations

import argparse

from lightning_most.commands.common import CommandError, add_checkpoint_arguments, load_inference, read_audio, run


def build_parser() -> argparse.ArgumentParser:
    """The `transcribe` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_most transcribe",
        description="Transcribe audio files with a trained checkpoint, decoded as it was trained to be "
        "(its beam size, joint CTC weight and word LM; see --no_word_lm). "
        "Prints one line per file: PATH<TAB>TRANSCRIPT.",
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("audio", nargs="+", help="audio files (any rate or channel count; resampled to 16 kHz mono)")
    parser.add_argument("--batch_size", type=int, default=8, help="files decoded together (default: 8)")
    return parser


def transcribe(args: argparse.Namespace) -> None:
    """Print the transcript of every file of `args.audio`, in order."""
    if args.batch_size < 1:
        raise CommandError(f"--batch_size must be >= 1, got {args.batch_size}")
    waveforms = [read_audio(path) for path in args.audio]  # every file is checked before the model loads
    inference = load_inference(args)
    for path, waveform in zip(args.audio, waveforms):
        if waveform.numel() < inference.min_input_samples:
            raise CommandError(
                f"audio file {path} holds {waveform.numel()} samples at 16 kHz; the model needs at least "
                f"{inference.min_input_samples}"
            )
    for start in range(0, len(waveforms), args.batch_size):
        paths = args.audio[start : start + args.batch_size]
        for path, text in zip(paths, inference.transcribe(waveforms[start : start + args.batch_size])):
            print(f"{path}\t{' '.join(text.split())}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run `transcribe` on `argv`."""
    run(build_parser(), transcribe, argv)

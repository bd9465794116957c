"""`python -m lightning_most transcribe --ckpt CKPT x.wav [y.wav ...]`: speech to text, one line per file."""

from __future__ import annotations

import argparse

import torch

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.commands.common import CommandError, add_checkpoint_arguments, load_inference, read_audio, run
from lightning_most.inference import MostInference


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


def longest_audio_seconds(inference: MostInference) -> float:
    """The longest audio whose input frames and transcript budget fit the backbone's positions."""
    frames_per_second = inference.input_features(torch.zeros(SAMPLE_RATE)).shape[0]  # 1 s of silence
    prompt_tokens = 8  # <bos>, <audio_start>, <audio_end>, <asr>, ... (a few specials around the frames)
    room = inference.module.config.max_position - inference.module.asr_decoding.max_new_tokens - prompt_tokens
    return max(room, 0) / frames_per_second


def transcribe(args: argparse.Namespace) -> None:
    """Print the transcript of every file of `args.audio`, in order (decoded in batches of similar length)."""
    if args.batch_size < 1:
        raise CommandError(f"--batch_size must be >= 1, got {args.batch_size}")
    waveforms = [read_audio(path) for path in args.audio]  # every file is checked before the model loads
    inference = load_inference(args)
    max_seconds = longest_audio_seconds(inference)
    for path, waveform in zip(args.audio, waveforms):
        if waveform.numel() < inference.min_input_samples:
            raise CommandError(
                f"audio file {path} holds {waveform.numel()} samples at 16 kHz; the model needs at least "
                f"{inference.min_input_samples}"
            )
        if waveform.numel() > max_seconds * SAMPLE_RATE:
            raise CommandError(
                f"audio file {path} lasts {waveform.numel() / SAMPLE_RATE:.0f} s; this model transcribes at most "
                f"{int(max_seconds)} s at once (its {inference.module.config.max_position} positions hold the audio frames "
                f"and up to {inference.module.asr_decoding.max_new_tokens} transcript tokens): split it, e.g. "
                f"`sox {path} part.wav trim 0 {int(max_seconds)} : newfile : restart`"
            )
    transcripts: list[str] = [""] * len(waveforms)
    for batch in batches_by_length(waveforms, args.batch_size):
        for i, text in zip(batch, inference.transcribe([waveforms[i] for i in batch])):
            transcripts[i] = text
    for path, text in zip(args.audio, transcripts):
        print(f"{path}\t{' '.join(text.split())}", flush=True)


def batches_by_length(waveforms: list[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of the waveforms in batches of similar length (shortest first).

    A batch decodes until its longest transcript ends and pads every prompt to its longest audio: files of
    similar length waste neither (the dev split decodes 1.4x faster than in file order, bench/RESULTS.md).
    """
    order = sorted(range(len(waveforms)), key=lambda i: waveforms[i].numel())
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def main(argv: list[str] | None = None) -> None:
    """Run `transcribe` on `argv`."""
    run(build_parser(), transcribe, argv)

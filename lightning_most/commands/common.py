"""What the checkpoint subcommands share: checkpoint options, audio reading, one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import soundfile
from torch import Tensor

from lightning_most.audio.waveforms import read_wav
from lightning_most.inference import InferenceError, MostInference

USAGE_ERROR = 2


class CommandError(Exception):
    """Bad input to a subcommand; its message names the file or option and the fix."""


def run(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], None], argv: list[str]) -> None:
    """Parse `argv` and run `command`; a CommandError or InferenceError exits 2 with one `error:` line."""
    args = parser.parse_args(argv)
    try:
        command(args)
    except (CommandError, InferenceError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--ckpt and the options that say how to load it."""
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--ckpt", required=True, help="a .ckpt written by `python -m lightning_most fit`")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument("--audio_io", help="JSON file replacing the checkpoint's audio_io (for checkpoints without one)")
    group.add_argument("--unit_quantizer", help="replaces the unit quantizer path stored in the checkpoint")
    group.add_argument("--hubert_path", help="replaces the HuBERT folder of the checkpoint's input features "
                       "(audio_io.features.hubert_path), and of its units when they named the same one (the HuBERT moved)")
    group.add_argument("--unit_hubert_path", help="replaces the units' HuBERT folder alone (audio_io.unit_encoder)")
    group.add_argument("--max_new_tokens", type=int, help="text decoding budget (default: the checkpoint's)")
    group.add_argument("--max_units", type=int, help="unit decoding budget of synthesis (default: the checkpoint's)")
    group.add_argument("--no_word_lm", action="store_true",
                       help="decode ASR without the checkpoint's word LM (asr_decoding.word_lm), with the model alone")


def add_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
    """--vocoder and the unit sampling options."""
    group = parser.add_argument_group("synthesis")
    group.add_argument("--vocoder", help="vocoder folder: unit HiFi-GAN (config.json + generator.ckpt), speechbrain "
                       "unit HiFi-GAN (hyperparams.yaml + generator.ckpt) or unit-to-mel; default: the one the checkpoint "
                       "names (audio_io.vocoder), else Griffin-Lim over log-mel units")
    group.add_argument("--temperature", type=float, default=0.0, help="unit sampling temperature (0 = greedy)")
    group.add_argument("--top_k", type=int, help="sample units among the k most likely only")
    group.add_argument("--seed", type=int, default=0, help="seed of unit sampling")


def load_inference(args: argparse.Namespace) -> MostInference:
    """MostInference for the checkpoint options (and synthesis options, when the parser has them)."""
    audio_io = None
    if args.audio_io:
        path = Path(args.audio_io)
        if not path.is_file():
            raise CommandError(f"--audio_io {path}: no such file")
        try:
            audio_io = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CommandError(f"--audio_io {path} is not valid JSON ({error})") from error
    vocoder = getattr(args, "vocoder", None)
    if vocoder and not Path(vocoder).is_dir():
        raise CommandError(f"--vocoder {vocoder}: no such folder (a unit HiFi-GAN, speechbrain or unit-to-mel vocoder)")
    for flag, folder in (("--hubert_path", args.hubert_path), ("--unit_hubert_path", args.unit_hubert_path)):
        if folder and not Path(folder).is_dir():
            raise CommandError(f"{flag} {folder}: no such folder (a HubertModel saved with save_pretrained)")
    try:
        return MostInference.from_checkpoint(
            args.ckpt,
            device=args.device,
            vocoder=vocoder,
            audio_io=audio_io,
            unit_quantizer=args.unit_quantizer,
            hubert_path=args.hubert_path,
            unit_hubert_path=args.unit_hubert_path,
            max_new_tokens=args.max_new_tokens,
            max_units=args.max_units,
            temperature=getattr(args, "temperature", 0.0),
            top_k=getattr(args, "top_k", None),
            seed=getattr(args, "seed", 0),
            word_lm=not args.no_word_lm,
        )
    except InferenceError:
        raise
    except (FileNotFoundError, ValueError, TypeError) as error:  # e.g. a quantizer or vocoder that does not fit
        raise CommandError(f"cannot load {args.ckpt}: {error}") from error


def read_audio(path: str | Path) -> Tensor:
    """A mono 16 kHz waveform (S,) from an audio file; CommandError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"audio file {path} does not exist")
    try:
        return read_wav(path)
    except (soundfile.SoundFileError, RuntimeError, ValueError) as error:
        raise CommandError(f"audio file {path} cannot be read ({error}): give a WAV, FLAC or OGG file") from error

"""`python -m lightning_most chat --ckpt CKPT [QUESTION | question.wav] [--speak answer.wav]`: ask the model.

A question is text, or the path of an audio file (`.wav`, `.flac`, `.ogg`) holding a spoken question;
the answer is printed as text, and with `--speak` also spoken by the model (its TTS task and the
vocoder) into a 16 kHz WAV. Without a question, chat is interactive: one question a line from
standard input (text or an audio path), `quit` or end of input to stop; the spoken answers are then
numbered (`answer-001.wav`, ...). A bad line in interactive mode prints an error and the chat goes on.

Audio questions must be at 16 kHz or more (higher rates are resampled): the model was trained on
16 kHz speech, and upsampling cannot give back what a lower rate lost. Paths (checkpoint, audio,
output) are taken as given, relative to the working directory, so chat runs from any folder; the
checkpoint's unit quantizer is found by the absolute path recorded at training (`--unit_quantizer`
overrides it), and answers never use the ASR word LM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.waveforms import write_wav
from lightning_most.commands.common import (
    CommandError,
    add_checkpoint_arguments,
    add_synthesis_arguments,
    load_inference,
    read_audio,
    run,
)
from lightning_most.inference import MostInference

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
QUIT = ("quit", "exit")


def build_parser() -> argparse.ArgumentParser:
    """The `chat` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_most chat",
        description="Ask a trained stage-2 checkpoint a question, written or spoken; print (and --speak) its answer. "
        "Without a question: interactive, one question a line.",
    )
    add_checkpoint_arguments(parser)
    add_synthesis_arguments(parser)
    parser.add_argument("question", nargs="?", help="a written question, or an audio file of a spoken one (16 kHz+)")
    parser.add_argument("--speak", help="also write the spoken answer to this WAV file (16 kHz, mono)")
    return parser


def is_audio_path(question: str) -> bool:
    """A question that names an audio file rather than asking in words."""
    return question.strip().lower().endswith(AUDIO_SUFFIXES)


def check_question_audio(path: str | Path) -> Path:
    """The path of a spoken question; CommandError for a missing, unreadable, empty or low-rate file."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise CommandError(f"audio file {path} cannot be read ({error}): give a WAV, FLAC or OGG file") from error
    if info.frames == 0:
        raise CommandError(f"audio file {path} holds no samples: record the question again")
    if info.samplerate < SAMPLE_RATE:
        raise CommandError(
            f"audio file {path} is sampled at {info.samplerate} Hz; the model hears 16 kHz speech: record at 16 kHz or "
            f"more (upsampling, e.g. `sox {path} -r 16000 out.wav`, cannot restore the missing band)"
        )
    return path


def answer(inference: MostInference, question: str, speak_to: Path | None) -> str:
    """The text answer to one question (written, or an audio path); with `speak_to`, also write its speech there."""
    if not question.strip():
        raise CommandError("the question is empty: ask something, or give an audio file")
    if is_audio_path(question):
        path = check_question_audio(question.strip())
        waveform = read_audio(path)  # (S,) at 16 kHz
        if waveform.numel() < inference.min_input_samples:
            raise CommandError(
                f"audio file {path} holds {waveform.numel()} samples at 16 kHz; the model needs at least "
                f"{inference.min_input_samples}"
            )
        text = inference.answer_text([waveform])[0]
    else:
        text = inference.answer_written([question.strip()])[0]
    text = " ".join(text.split())
    if speak_to is not None:
        waveform = inference.synthesize([text or "."])[0]
        speak_to.parent.mkdir(parents=True, exist_ok=True)
        write_wav(speak_to, waveform)
        print(f"wrote {speak_to} ({waveform.numel() / SAMPLE_RATE:.2f} s)", file=sys.stderr, flush=True)
    return text


def _numbered(path: Path | None, n: int) -> Path | None:
    return None if path is None else path.with_name(f"{path.stem}-{n:03d}{path.suffix or '.wav'}")


def chat(args: argparse.Namespace) -> None:
    """Answer `args.question`, or every line of standard input when there is none."""
    speak_to = Path(args.speak) if args.speak else None
    if speak_to is not None and speak_to.is_dir():
        raise CommandError(f"--speak {speak_to} is a folder; give a file name such as {speak_to / 'answer.wav'}")
    if args.question is not None and not args.question.strip():
        raise CommandError("the question is empty: ask something, or give an audio file")
    if args.question is not None and is_audio_path(args.question):
        check_question_audio(args.question.strip())  # before the model loads
    args.no_word_lm = True  # answers are not ASR transcripts: the word LM plays no part
    inference = load_inference(args)
    if args.question is not None:
        print(answer(inference, args.question, speak_to), flush=True)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print("Ask a question (text, or the path of a 16 kHz audio file); 'quit' to stop.", file=sys.stderr)
    n = 0
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip().lower() in QUIT:
            return
        if not line.strip():
            continue
        n += 1
        try:
            print(answer(inference, line, _numbered(speak_to, n)), flush=True)
        except CommandError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run `chat` on `argv`."""
    run(build_parser(), chat, argv)

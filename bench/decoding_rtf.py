"""Real-time factor of `transcribe` on the dev split, before (c3f8cb4's decoding) and after the issue-16 speed-up.

    .venv/bin/python bench/decoding_rtf.py --ckpt runs/quickstart/checkpoints/last.ckpt

Reads the first `--num` dev recordings of the corpus (the quickstart's: 100, 6.7 minutes) and decodes them
as `python -m lightning_most transcribe` does: Whisper features from the audio, then `Decoder.transcribe` in
batches of `--batch_size` recordings of similar length (`--file_order`: in corpus order, as before session
16), with the checkpoint's own decoding (the quickstart's: beam 8, joint CTC 0.5, word LM 0.5). The first
`--reference_num` recordings so batched (the shortest, unless `--file_order`) are also decoded by the
reference implementation (`tests/decoding_reference.py`, the decoding before the speed-up) batch by batch,
alternating with the fast path, and their transcripts compared. RTF = seconds / seconds of audio, on
`--threads` threads (2: the issue's 2 cores). The last line is JSON. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from lhotse import CutSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_most.attention import set_cache_latent
from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.commands.common import read_audio
from lightning_most.commands.transcribe import batches_by_length
from lightning_most.inference import MostInference
from lightning_most.layouts import asr_example
from tests.decoding_reference import reference_transcribe


def dev_recordings(corpus_dir: Path, num: int) -> list[tuple[str, torch.Tensor, str]]:
    """(id, waveform (S,), reference text) of the first `num` dev cuts of the corpus (0 = all)."""
    cuts = CutSet.from_file(corpus_dir / "embedded_cuts_dev.jsonl.gz")
    out = []
    for cut in cuts:
        out.append((cut.id, read_audio(cut.recording.sources[0].source), cut.supervisions[0].text))
        if len(out) == num:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a stage-1 checkpoint (the quickstart's last.ckpt)")
    parser.add_argument("--corpus_dir", default="data/embedded", help="the corpus whose dev split is decoded")
    parser.add_argument("--num", type=int, default=0, help="dev recordings decoded by the fast path (0 = all)")
    parser.add_argument("--reference_num", type=int, default=16, help="of those, decoded by the reference too")
    parser.add_argument("--batch_size", type=int, default=8, help="recordings decoded together (transcribe's default)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--no_word_lm", action="store_true", help="decode without the checkpoint's word LM")
    parser.add_argument("--cache_latent", choices=["true", "false"], default=None,
                        help="MLA KV cache of the fast path (AttentionConfig.cache_latent; default: the checkpoint's)")
    parser.add_argument("--file_order", action="store_true",
                        help="batches in corpus order instead of transcribe's batches of similar length")
    parser.add_argument("--profile", type=int, default=0, help="print the fast path's N most expensive functions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inference = MostInference.from_checkpoint(args.ckpt, word_lm=not args.no_word_lm)
    torch.set_num_threads(args.threads)
    module = inference.module
    decoder = module.decoder
    if args.cache_latent is not None:
        set_cache_latent(module.backbone, args.cache_latent == "true")
    recordings = dev_recordings(Path(args.corpus_dir), args.num)
    if not args.file_order:  # as `transcribe` batches them; the reference decodes the same batches
        recordings = [recordings[i] for batch in batches_by_length([w for _, w, _ in recordings], len(recordings))
                      for i in batch]  # fmt: skip
    print(f"{len(recordings)} dev recordings, {sum(w.numel() for _, w, _ in recordings) / SAMPLE_RATE:.1f} s of audio; "
          f"decoding: {module.asr_decoding.describe()}, {torch.get_num_threads()} threads", flush=True)
    profiler = cProfile.Profile() if args.profile else None
    seconds = {"features": 0.0, "fast": 0.0, "fast_on_reference_part": 0.0, "reference": 0.0}
    audio = {"all": 0.0, "reference_part": 0.0}
    mismatches, compared = [], 0
    for start in range(0, len(recordings), args.batch_size):
        part = recordings[start : start + args.batch_size]
        with_reference = start < args.reference_num
        tic = time.perf_counter()
        examples = [asr_example([], module.specials, module.config.text_vocab_size, features=inference.input_features(w))
                    for _, w, _ in part]  # fmt: skip
        batch = inference._batch(examples)
        seconds["features"] += time.perf_counter() - tic
        duration = sum(w.numel() for _, w, _ in part) / SAMPLE_RATE
        audio["all"] += duration
        if with_reference:
            tic = time.perf_counter()
            before = reference_transcribe(decoder, batch)
            seconds["reference"] += time.perf_counter() - tic
            audio["reference_part"] += duration
        if profiler is not None:
            profiler.enable()
        tic = time.perf_counter()
        after = decoder.transcribe(batch)
        elapsed = time.perf_counter() - tic
        if profiler is not None:
            profiler.disable()
        seconds["fast"] += elapsed
        if with_reference:
            seconds["fast_on_reference_part"] += elapsed
            compared += len(part)
            mismatches += [(cut_id, b, a) for (cut_id, _, _), b, a in zip(part, before, after) if b != a]
        print(f"  {start + len(part)}/{len(recordings)}: features {seconds['features']:.1f} s, fast {seconds['fast']:.1f} s"
              + (f", reference {seconds['reference']:.1f} s" if with_reference else ""), flush=True)
    for cut_id, before, after in mismatches:
        print(f"MISMATCH {cut_id}\n  reference: {before}\n  fast:      {after}")
    result = {
        "recordings": len(recordings),
        "audio_seconds": round(audio["all"], 2),
        "features_seconds": round(seconds["features"], 2),
        "decode_seconds": round(seconds["fast"], 2),
        "rtf_transcribe": round((seconds["features"] + seconds["fast"]) / audio["all"], 4),
        "rtf_decode": round(seconds["fast"] / audio["all"], 4),
        "reference_recordings": compared,
        "identical_transcripts": compared - len(mismatches),
    }
    if compared:
        result["reference_rtf_decode"] = round(seconds["reference"] / audio["reference_part"], 4)
        result["fast_rtf_decode_same_part"] = round(seconds["fast_on_reference_part"] / audio["reference_part"], 4)
        result["speedup_decode"] = round(seconds["reference"] / seconds["fast_on_reference_part"], 2)
    print(f"RTF (features + decoding) {result['rtf_transcribe']}, decoding only {result['rtf_decode']}"
          + (f"; reference decoding RTF {result['reference_rtf_decode']} on the first {compared}, "
             f"speed-up {result['speedup_decode']}x, {result['identical_transcripts']}/{compared} transcripts identical"
             if compared else ""))
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

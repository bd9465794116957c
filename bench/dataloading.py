"""Data delivery vs. model consumption, in hours of audio per second, on the embedded corpus.

    .venv/bin/python bench/dataloading.py [--corpus_dir data/embedded] [--batches 40] [--num_workers 2]

Delivery: the stage-1 `EmbeddedDataModule` (ASR / TTS / text LM at 0.4 / 0.4 / 0.2, lhotse fbank on
the fly, `num_workers` workers), then the same mix streamed from Lhotse Shar shards of the train split
(exported to a temporary folder first; the export time is reported, not counted). Consumption: one
forward + backward pass of the `tiny` backbone (lightning_most.config) on batches from that loader,
on the same machine. Audio in a batch is counted from its positions: ASR frames x frame period +
TTS units x 20 ms. Timing starts after the first batch (worker start-up and bucket filling are
reported separately as `startup_s`). The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from lhotse import CutSet

from datamodules.datamodule import LoaderConfig, MostDataModule
from datamodules.embedded import corpus_paths
from datamodules.embedded_datamodule import EmbeddedDataModule
from datamodules.mixing import SourceConfig
from datamodules.shards import export_shar
from lightning_most.audio.features import FeatureConfig

UNIT_SECONDS = 0.02  # 50 Hz units


def audio_seconds(batch: dict, frame_seconds: float) -> float:
    """Seconds of audio a batch carries: ASR feature frames + TTS unit positions."""
    frames = int(batch["feature_mask"].sum())
    units = int(((batch["modality_ids"] == 1) & ~batch["feature_mask"] & batch["attention_mask"]).sum())
    return frames * frame_seconds + units * UNIT_SECONDS


def delivery(module: MostDataModule, batches: int, frame_seconds: float) -> dict:
    """Hours of audio per second delivered by the module's train loader, after its first batch."""
    start = time.perf_counter()
    iterator = iter(module.train_dataloader())
    next(iterator)
    startup = time.perf_counter() - start
    seconds, t0 = 0.0, time.perf_counter()
    for _, batch in zip(range(batches), iterator):
        seconds += audio_seconds(batch, frame_seconds)
    elapsed = time.perf_counter() - t0
    return {"h_per_s": seconds / 3600 / elapsed, "audio_h": seconds / 3600, "seconds": elapsed, "startup_s": startup}


def consumption(module: MostDataModule, steps: int, frame_seconds: float, num_units: int) -> dict:
    """Hours of audio per second of a forward + backward pass of the tiny backbone on the module's batches."""
    from lightning_most.backbone import MoSTBackbone, next_token_loss
    from lightning_most.config import build_config

    config = build_config("tiny", {"audio_feature_dim": module.feature_dim, "num_audio_units": num_units})
    model = MoSTBackbone(config).train()
    batches = [b for _, b in zip(range(steps + 1), module.train_dataloader())]
    seconds, tokens, elapsed = 0.0, 0, 0.0
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        out = model(
            batch["input_ids"],
            batch["modality_ids"],
            attention_mask=batch["attention_mask"],
            audio_features=batch.get("audio_features"),
            feature_mask=batch["feature_mask"],
        )
        (next_token_loss(out.logits, batch["labels"]) + out.aux_loss).backward()
        model.zero_grad(set_to_none=True)
        if i == 0:
            continue  # warm-up step
        elapsed += time.perf_counter() - t0
        seconds += audio_seconds(batch, frame_seconds)
        tokens += int(batch["attention_mask"].sum())
    return {
        "h_per_s": seconds / 3600 / elapsed,
        "step_s": elapsed / steps,
        "tokens_per_step": tokens // steps,
        "parameters": model.num_parameters(),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements and print them, the JSON summary last."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", default="data/embedded")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per loader")
    parser.add_argument("--steps", type=int, default=8, help="model steps timed")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--max_duration", type=float, default=60.0)
    parser.add_argument("--frame_stack", type=int, default=4)
    args = parser.parse_args(argv)
    paths = corpus_paths(args.corpus_dir)
    if not paths.summary.is_file():
        raise SystemExit(f"no embedded corpus in {args.corpus_dir}: run `python -m lightning_most prepare` first")
    num_units = json.loads(paths.unit_quantizer.with_suffix(".json").read_text())["num_units"]
    features = FeatureConfig(frame_stack=args.frame_stack)
    frame_seconds = 0.01 * args.frame_stack
    loader = LoaderConfig(max_duration=args.max_duration, num_buckets=8, num_workers=args.num_workers)
    common = {"features": features, "loader": loader}
    embedded = EmbeddedDataModule(args.corpus_dir, **common)
    fbank = delivery(embedded, args.batches, frame_seconds)
    print(f"embedded, fbank on the fly: {fbank}", flush=True)

    with tempfile.TemporaryDirectory(prefix="most-shar-") as tmp:
        t0 = time.perf_counter()
        export_shar(CutSet.from_file(paths.cuts["train"]), Path(tmp) / "train", shard_size=200)
        export_s = time.perf_counter() - t0
        shar_dir = str(Path(tmp) / "train")
        shar_sources = [
            SourceConfig("shar", "asr", shar_dir),
            SourceConfig("shar", "tts", shar_dir),
            SourceConfig("fortunes", "text_lm", str(paths.text["train"])),
        ]
        shar = delivery(MostDataModule(train_sources=shar_sources, **common), args.batches, frame_seconds)
    shar["export_s"] = export_s
    print(f"Shar shards, fbank on the fly: {shar}", flush=True)

    model = consumption(
        EmbeddedDataModule(args.corpus_dir, features=features, loader=dataclasses.replace(loader, num_workers=0)), args.steps, frame_seconds, num_units
    )
    print(f"tiny backbone forward+backward: {model}", flush=True)
    summary = {
        "delivery_fbank_h_per_s": round(fbank["h_per_s"], 4),
        "delivery_shar_h_per_s": round(shar["h_per_s"], 4),
        "consumption_tiny_fwd_bwd_h_per_s": round(model["h_per_s"], 4),
        "ratio_fbank": round(fbank["h_per_s"] / model["h_per_s"], 2),
        "ratio_shar": round(shar["h_per_s"] / model["h_per_s"], 2),
        "num_workers": args.num_workers,
        "max_duration": args.max_duration,
        "frame_stack": args.frame_stack,
        "batches": args.batches,
        "tiny_step_s": round(model["step_s"], 3),
        "tiny_tokens_per_step": model["tokens_per_step"],
        "tiny_parameters": model["parameters"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""Does a from-scratch decoder learn to read its audio? Consecutive vs audio_scaled transcript positions.

Two tasks, ASR rows only, the tiny backbone (no audio encoder), AdamW 2e-3 with 100 warmup steps:

    copy  frames are one-hot characters + noise (one frame per character): the transcript is a copy
    asr   the embedded corpus, frozen Whisper tiny.en states (2 stacked, 25 Hz), held-out dev loss

    .venv/bin/python bench/alignment_probe.py --task copy --steps 400
    .venv/bin/python bench/alignment_probe.py --task asr --steps 600   # needs data/embedded (+ whisper_features)

Each run trains `consecutive` and then `audio_scaled` (`lightning_most.positions`, true transcript
lengths) from the same seed and prints the train loss every 100 steps and, for asr, the dev ASR
loss (teacher forced, per token). Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import EmbeddedDataModule
from datamodules.datamodule import LoaderConfig
from lightning_most.audio.features import FeatureConfig
from lightning_most.backbone import MoSTBackbone, next_token_loss
from lightning_most.batch import IGNORE_INDEX
from lightning_most.config import build_config
from lightning_most.layouts import asr_example, collate
from lightning_most.positions import audio_scaled_positions
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

CHARS = "abcdefghijklmnopqrstuvwxyz ',.?!-"
COPY_DIM = 64


def positions(batch: dict, scheme: str) -> torch.Tensor | None:
    if scheme == "consecutive":
        return None
    lengths = ((batch["labels"] != IGNORE_INDEX).sum(dim=1) - 1).float()
    return audio_scaled_positions(batch["attention_mask"], batch["feature_mask"], batch["task_ids"] == 0, lengths)


def copy_batches(corpus: str, batch_size: int, specials: SpecialTokens, vocab: int):
    with gzip.open(Path(corpus) / "text_train.jsonl.gz", "rt") as f:
        texts = [json.loads(line)["text"].lower() for line in f]
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    while True:
        examples = []
        for text in rng.sample(texts, batch_size):
            index = torch.tensor([CHARS.index(c) if c in CHARS else len(CHARS) for c in text])
            frames = torch.zeros(len(text), COPY_DIM)
            frames[torch.arange(len(text)), index] = 1.0
            frames += 0.3 * torch.randn(frames.shape, generator=g)
            examples.append(asr_example(list(text.encode()), specials, vocab, features=frames))
        yield collate(examples, specials.pad)


def run(args: argparse.Namespace, scheme: str) -> None:
    torch.manual_seed(0)
    specials = SpecialTokens(ByteTokenizer().base_vocab_size)
    width = COPY_DIM if args.task == "copy" else 768
    model = MoSTBackbone(build_config("tiny", {"audio_feature_dim": width, "num_audio_units": 200}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.01)
    data = None
    if args.task == "copy":
        batches = copy_batches(args.corpus, 8, specials, model.config.text_vocab_size)
    else:
        data = EmbeddedDataModule(
            corpus_dir=args.corpus, task_weights={"asr": 1.0, "tts": 0.0, "text_lm": 0.0},
            features=FeatureConfig(kind="whisper", frame_stack=2),
            loader=LoaderConfig(max_duration=24.0, max_cut_duration=24.0, num_buckets=8, buffer_size=2000, num_workers=1),
        )  # fmt: skip
        data.prepare_data()
        data.setup("fit")
        batches = iter(data.train_dataloader())
    start, recent = time.time(), []
    for step in range(1, args.steps + 1):
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, step / 100)
        out = model(batch["input_ids"], batch["modality_ids"], batch["attention_mask"], batch["audio_features"],
                    batch["feature_mask"], position_ids=positions(batch, scheme))
        loss = next_token_loss(out.logits, batch["labels"])
        optimizer.zero_grad()
        (loss + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent.append(loss.item())
        if step % 100 == 0:
            print(f"{args.task} {scheme:12s} step {step:5d}  train loss {sum(recent[-100:]) / 100:.3f}  "
                  f"{time.time() - start:.0f} s", flush=True)
    if data is not None:
        data.setup("validate")
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in data.val_dataloader():
                if not bool(batch["feature_mask"].any()):
                    continue
                labels = batch["labels"].masked_fill((batch["task_ids"] != 0)[:, None], IGNORE_INDEX)
                out = model(batch["input_ids"], batch["modality_ids"], batch["attention_mask"],
                            batch["audio_features"], batch["feature_mask"], position_ids=positions(batch, scheme))
                total, n = total + next_token_loss(out.logits, labels).item(), n + 1
        print(f"{args.task} {scheme:12s} dev ASR loss {total / n:.3f} ({n} batches)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("copy", "asr"), default="copy")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--corpus", default="data/embedded")
    parser.add_argument("--schemes", default="consecutive,audio_scaled")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for scheme in args.schemes.split(","):
        run(args, scheme)


if __name__ == "__main__":
    main()

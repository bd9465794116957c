"""How fast does the audio encoder alone learn to transcribe the embedded corpus with CTC?

The quickstart's decoder cannot transcribe before its encoder hears; this probe trains only the
input projection, `BidirectionalAudioEncoder` and a CTC head (the path `ctc_warmup_steps` trains) on the ASR cuts
and reports greedy CTC WER / CER on the dev split after a fixed number of steps:

    .venv/bin/python bench/ctc_encoder_probe.py --steps 2000 --max_duration 24
    .venv/bin/python bench/ctc_encoder_probe.py --steps 2000 --max_duration 24 --corpus data/embedded_4k

(`python -m lightning_most prepare --out_dir data/embedded_4k --num_train 4000` builds the larger
corpus.) Results: bench/RESULTS.md. Learning rate: linear warmup over 100 steps, then constant.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import EmbeddedDataModule
from datamodules.datamodule import LoaderConfig
from lightning_most.audio.features import FeatureConfig
from lightning_most.bidirectional_encoder import BidirectionalAudioEncoder
from lightning_most.config import AudioEncoderConfig
from lightning_most.evaluation.normalize import normalize_text

BLANK = 256  # byte tokens 0-255, then the blank


def spec_augment(features: torch.Tensor, counts: torch.Tensor, stack: int) -> torch.Tensor:
    """Two frequency masks (<= 15 of 80 bins) and one time mask (<= 6 positions) per 25 positions, per segment."""
    out = features.clone().view(features.shape[0], stack, -1)  # (N, stack, mel)
    mel, start = out.shape[-1], 0
    for n in counts.tolist():
        seg = out[start : start + n]
        for _ in range(2):
            width = int(torch.randint(0, 16, ()))
            first = int(torch.randint(0, mel - width, ()))
            seg[:, :, first : first + width] = 0
        for _ in range(max(1, n // 25)):
            width = int(torch.randint(0, min(6, n) + 1, ()))
            first = int(torch.randint(0, max(1, n - width), ()))
            seg[first : first + width] = 0
        start += n
    return out.view_as(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/embedded")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--max_duration", type=float, default=24.0, help="seconds of ASR audio per batch")
    parser.add_argument("--frame_stack", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_conv_layers", type=int, default=2)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--specaugment", action="store_true")
    parser.add_argument("--features", default="fbank", choices=("fbank", "whisper"))
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout on the projected frames")
    parser.add_argument("--time_mask", type=float, default=0.0, help="fraction of positions zeroed in training")
    parser.add_argument("--dev_batches", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    data = EmbeddedDataModule(
        corpus_dir=args.corpus, task_weights={"asr": 1.0, "tts": 0.0, "text_lm": 0.0},
        features=FeatureConfig(kind=args.features, frame_stack=args.frame_stack),
        loader=LoaderConfig(max_duration=args.max_duration, max_cut_duration=min(30.0, args.max_duration),
                            num_buckets=8, buffer_size=2000, num_workers=1),
    )
    data.prepare_data()
    d, width = args.hidden_size, (80 if args.features == "fbank" else 384) * args.frame_stack
    projector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d), nn.GELU(), nn.Linear(d, d),
                              nn.Dropout(args.dropout))
    encoder = BidirectionalAudioEncoder(d, AudioEncoderConfig(num_conv_layers=args.num_conv_layers, num_layers=args.num_layers))
    head = nn.Linear(d, BLANK + 1)
    params = [*projector.parameters(), *encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    def ctc_logits(batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        counts = batch["feature_mask"].sum(dim=1)
        rows = (counts > 0).nonzero().flatten().tolist()
        counts = counts[counts > 0]
        features = batch["audio_features"]
        if train and args.specaugment:
            features = spec_augment(features, counts, args.frame_stack)
        if train and args.time_mask > 0:
            features = features * (torch.rand(features.shape[0], 1) >= args.time_mask)
        projector.train(train)
        _, padded = encoder(projector(features), counts)
        return head(padded), counts, [batch["texts"][r] for r in rows]

    data.setup("fit")
    start, step, recent = time.time(), 0, []
    for batch in data.train_dataloader():
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        logits, lengths, texts = ctc_logits(batch, train=True)
        targets = [torch.tensor(list(t.encode())) for t in texts]
        loss = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.cat(targets), lengths,
                          torch.tensor([len(t) for t in targets]), blank=BLANK, zero_infinity=True)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        recent.append(loss.item())
        if step % 500 == 0:
            print(f"step {step}  {time.time() - start:.0f} s  train CTC {sum(recent[-500:]) / 500:.3f}", flush=True)
        if step >= args.steps:
            break
    seconds = time.time() - start

    data.setup("validate")
    wer, cer = WordErrorRate(), CharErrorRate()
    with torch.no_grad():
        for i, batch in enumerate(data.val_dataloader()):
            if i >= args.dev_batches:
                break
            if not bool(batch["feature_mask"].any()):
                continue
            logits, lengths, texts = ctc_logits(batch, train=False)
            best = logits.argmax(-1)
            hyps = [bytes(t for t in torch.unique_consecutive(best[j, :n]).tolist() if t < BLANK).decode(errors="replace")
                    for j, n in enumerate(lengths.tolist())]
            hyps, refs = [normalize_text(h) for h in hyps], [normalize_text(t) for t in texts]
            wer.update(hyps, refs)
            cer.update(hyps, refs)
    print(f"corpus={args.corpus} steps={step} s/step={seconds / step:.3f} specaugment={args.specaugment} "
          f"dev CTC WER={float(wer.compute()):.3f} CER={float(cer.compute()):.3f}")


if __name__ == "__main__":
    main()

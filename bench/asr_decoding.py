"""Dev ASR WER and decoding time of one checkpoint by beam size and joint CTC weight, greedy as the reference.

    .venv/bin/python bench/asr_decoding.py --ckpt runs/quickstart/tensorboard/version_0/checkpoints/last.ckpt \\
        --beams 1,4,8 --weights 0.5

Reads the dev split of the config's data module (the quickstart's by default), decodes every ASR
batch once per (beam, weight) setting in the same process, and prints WER and seconds, each also as
a ratio to the first setting. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from torchmetrics.text import WordErrorRate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_most.evaluation.normalize import normalize_text
from lightning_most.layouts import TASKS
from lightning_most.stages.base import StageModule, _select


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/quickstart.yaml")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--weights", default="0.5", help="asr_ctc_decoding_weight values")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cli = LightningCLI(
        model_class=StageModule, datamodule_class=pl.LightningDataModule, subclass_mode_model=True,
        subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"}, run=False,
        args=["--config", args.config, "--trainer.logger", "false", "--trainer.callbacks", "[]"],
    )
    model, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("validate")
    model.configure_model()
    model.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    batches = []
    for batch in data.val_dataloader():
        rows = (batch["task_ids"] == TASKS.index("asr")).nonzero().flatten().tolist()
        if rows:
            batches.append(_select(batch, rows))
    reference = None
    for weight in (float(w) for w in args.weights.split(",")):
        for beam in (int(b) for b in args.beams.split(",")):
            model.hparams.asr_beam_size, model.hparams.asr_ctc_decoding_weight = beam, weight
            wer, start = WordErrorRate(), time.perf_counter()
            for batch in batches:
                hyps = model.transcribe_batch(batch)
                wer.update([normalize_text(h) for h in hyps], [normalize_text(t) for t in batch["texts"]])
            seconds, value = time.perf_counter() - start, float(wer.compute())
            reference = reference or (value, seconds)
            print(f"w={weight} beam={beam}: dev WER {value:.4f} ({value / reference[0]:.3f} x), "
                  f"{seconds:.1f} s ({seconds / reference[1]:.2f} x), {sum(len(b['texts']) for b in batches)} utterances",
                  flush=True)


if __name__ == "__main__":
    main()

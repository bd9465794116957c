"""Dev ASR WER and decoding time of one checkpoint by beam size, joint CTC weight and word-LM fusion.

    .venv/bin/python bench/asr_decoding.py --ckpt runs/quickstart/checkpoints/last.ckpt \\
        --beams 1,4,8 --weights 0.5 --lm_weights 0,0.3 --word_bonuses 1.0

Reads the dev split of the config's data module (the quickstart's by default), decodes every ASR
batch once per (CTC weight, LM weight, word bonus, beam) setting in the same process, and prints WER
and seconds, each also as a ratio to the first setting. An LM weight of 0 decodes without the word
LM; otherwise the config's `asr_decoding.word_lm` (or a default one) is used with that weight, bonus and OOV
log-prob, counted on `--lm_text` if given, else as in `fit`. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torchmetrics.text import WordErrorRate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_most.batch import TASKS
from lightning_most.decoding import WordLMConfig
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.main import MostCLI
from lightning_most.safe_loading import load_checkpoint
from lightning_most.stages import StageModule
from lightning_most.stages.evaluation import select_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/quickstart.yaml")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--weights", default="0.5", help="asr_decoding.ctc_weight values")
    parser.add_argument("--lm_weights", default="0", help="asr_decoding.word_lm.weight values (0 = no word LM)")
    parser.add_argument("--word_bonuses", default="1.0", help="asr_decoding.word_lm.word_bonus values")
    parser.add_argument("--oov_log_probs", default="-12", help="asr_decoding.word_lm.oov_log_prob values")
    parser.add_argument("--orders", default="", help="asr_decoding.word_lm.order values (default: the config's)")
    parser.add_argument("--show", type=int, default=0, help="print this many reference / hypothesis pairs per setting")
    parser.add_argument("--lm_text", default="", help="word LM text files (default: the config's, else the data's training text)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(Path(args.config).read_text())
    for key in ("ckpt_path", "weights_only"):  # options of `fit`: this parser has no subcommands
        config.pop(key, None)
    config["trainer"] = {**config.get("trainer", {}), "logger": False, "callbacks": []}
    cli = MostCLI(
        model_class=StageModule, datamodule_class=pl.LightningDataModule, subclass_mode_model=True,
        subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"}, run=False, args=config,
    )
    model, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("validate")
    model.configure_model()
    model.load_state_dict(load_checkpoint(args.ckpt)["state_dict"])
    model.eval()
    batches = []
    for batch in data.val_dataloader():
        rows = (batch["task_ids"] == TASKS.index("asr")).nonzero().flatten().tolist()
        if rows:
            batches.append(select_rows(batch, rows))
    lm_config = model.asr_decoding.word_lm or WordLMConfig()
    if args.lm_text:
        lm_config.text_files = args.lm_text.split(",")
    elif not lm_config.text_files:  # as in fit: the data module's training text
        lm_config.text_files = data.word_lm_text_files()
    settings = [
        (weight, lm_weight, bonus, oov, order, beam)
        for order in ([int(o) for o in args.orders.split(",")] if args.orders else [lm_config.order])
        for weight in (float(w) for w in args.weights.split(","))
        for lm_weight in (float(w) for w in args.lm_weights.split(","))
        for bonus in (float(b) for b in args.word_bonuses.split(","))
        for oov in (float(b) for b in args.oov_log_probs.split(","))
        for beam in (int(b) for b in args.beams.split(","))
    ]
    reference = None
    for weight, lm_weight, bonus, oov, order, beam in settings:
        lm = dataclasses.replace(lm_config, weight=lm_weight, word_bonus=bonus, oov_log_prob=oov, order=order)
        model.asr_decoding = dataclasses.replace(model.asr_decoding, beam_size=beam, ctc_weight=weight,
                                                 word_lm=lm if lm_weight > 0 else None)
        decoder = model.decoder
        wer, start, pairs = WordErrorRate(), time.perf_counter(), []
        for batch in batches:
            hyps = decoder.transcribe(batch)
            wer.update([normalize_text(h) for h in hyps], [normalize_text(t) for t in batch["texts"]])
            pairs += zip(batch["texts"], hyps)
        seconds, value = time.perf_counter() - start, float(wer.compute())
        reference = reference or (value, seconds)
        lm = f" lm={lm_weight} bonus={bonus} oov={oov} order={order}" if lm_weight > 0 else ""
        print(f"w={weight}{lm} beam={beam}: dev WER {value:.4f} ({value / reference[0]:.3f} x), "
              f"{seconds:.1f} s ({seconds / reference[1]:.2f} x), {sum(len(b['texts']) for b in batches)} utterances",
              flush=True)
        for ref, hyp in pairs[: args.show]:
            print(f"  REF {ref}\n  HYP {hyp}")


if __name__ == "__main__":
    main()

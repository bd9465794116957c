"""Does a trained model's TTS read its text? Dev TTS loss with the true text, with texts shuffled between
utterances, and with no text.

A model that speaks its text loses much more than a nat per unit when the text is wrong; one that
continues unit sequences from the units before (babble) loses almost nothing. Teacher forced, on the
units stored with a Lhotse cut manifest (`cut.custom["units"]`, the data module's TTS targets), in the
checkpoint's own positions (`unit_positions`) and without any input dropout.

    .venv/bin/python bench/tts_text_reliance.py --ckpt runs/quickstart/checkpoints/last.ckpt \
        --cuts data/embedded/embedded_cuts_dev.jsonl.gz

Prints the three losses (nats per unit, <audio_end> included) and, last, one JSON line. Results:
bench/RESULTS.md, "TTS units and vocoders".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_most.batch import IGNORE_INDEX
from lightning_most.inference import load_stage_module
from lightning_most.layouts import collate, tts_example
from lightning_most.stages.losses import task_losses


def dev_units(cuts_path: str, max_cuts: int) -> tuple[list[str], list[torch.Tensor]]:
    """Texts and units (T,) of the first `max_cuts` cuts of a manifest that carry units."""
    from lhotse import load_manifest_lazy

    texts, units = [], []
    for cut in load_manifest_lazy(cuts_path):
        if len(texts) == max_cuts:
            break
        if not (cut.custom and "units" in cut.custom and cut.supervisions):
            continue
        texts.append(cut.supervisions[0].text)
        units.append(torch.from_numpy(cut.load_custom("units").astype("int64")))
    if not texts:
        raise ValueError(f"--cuts {cuts_path}: no cut carries units (cut.custom['units']): give a TTS manifest")
    return texts, units


@torch.no_grad()
def tts_loss(module, texts: list[str], units: list[torch.Tensor], batch_size: int) -> float:
    """Mean teacher-forced loss per target (units and <audio_end>) of speaking `units` after `texts`."""
    total, count = 0.0, 0
    V = module.config.text_vocab_size
    for start in range(0, len(texts), batch_size):
        examples = [tts_example(module.tokenizer.encode(t), u, module.specials, V)
                    for t, u in zip(texts[start : start + batch_size], units[start : start + batch_size])]
        batch = collate(examples, module.specials.pad)
        loss, _ = task_losses(module(batch).logits, batch["labels"], batch["task_ids"])
        targets = int((batch["labels"] != IGNORE_INDEX).sum())
        total, count = total + float(loss) * targets, count + targets
    return total / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a stage checkpoint written by fit")
    parser.add_argument("--cuts", required=True, help="Lhotse cut manifest with units (the dev split of the run's data)")
    parser.add_argument("--max_cuts", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="of the shuffle")
    args = parser.parse_args(argv)
    module, _ = load_stage_module(args.ckpt, "cpu", word_lm=False)
    module.eval()
    texts, units = dev_units(args.cuts, args.max_cuts)
    num_units = module.config.num_audio_units
    if max(int(u.max()) for u in units) >= num_units:
        raise ValueError(f"--cuts {args.cuts}: units reach beyond the checkpoint's {num_units}: not this run's units")
    shuffled = texts[:]
    random.Random(args.seed).shuffle(shuffled)
    result = {
        "cuts": len(texts),
        "true_text": tts_loss(module, texts, units, args.batch_size),
        "shuffled_text": tts_loss(module, shuffled, units, args.batch_size),
        "no_text": tts_loss(module, [""] * len(texts), units, args.batch_size),
    }
    result["nats_from_the_text"] = result["shuffled_text"] - result["true_text"]
    print(f"dev TTS loss on {len(texts)} cuts (nats per unit): true text {result['true_text']:.3f}, "
          f"shuffled text {result['shuffled_text']:.3f}, no text {result['no_text']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

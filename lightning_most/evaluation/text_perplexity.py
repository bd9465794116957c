"""Text perplexity on held-out text: how much text ability a speech-trained model keeps (the forgetting measure).

Each text is laid out as the text-LM task trains it (`|bos| t t t |eos|`, modality 0) and scored by the
model's next-token cross-entropy over its tokens and `|eos|`. Perplexity = exp(total NLL / total
tokens), pooled over texts (per token of the model's tokenizer: bytes for the byte tokenizer).
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_most.backbone import next_token_loss
from lightning_most.batch import IGNORE_INDEX
from lightning_most.layouts import collate, text_lm_example


@dataclass
class TextPerplexityConfig:
    """How texts are scored."""

    batch_size: int = 8
    max_tokens: int = 1024
    """Longer texts are cut to this many tokens (the model's trained lengths)."""


@dataclass
class TextPerplexityResult:
    """Pooled perplexity of one text set."""

    name: str
    perplexity: float
    nll_per_token: float
    num_texts: int
    num_tokens: int

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for reports and loggers."""
        return {"perplexity": self.perplexity, "nll_per_token": self.nll_per_token,
                "num_texts": float(self.num_texts), "num_tokens": float(self.num_tokens)}


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """The "text" of each JSON line of a .jsonl or .jsonl.gz file (the first `limit`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            text = record.get("text") if isinstance(record, dict) else None
            if text is None or not text.strip():
                raise ValueError(f"line {line_no} of {path} has no \"text\"")
            texts.append(str(text))
            if limit is not None and len(texts) == limit:
                break
    if not texts:
        raise ValueError(f"{path} holds no texts")
    return texts


@torch.no_grad()
def evaluate_text_perplexity(module, texts: list[str], name: str, config: TextPerplexityConfig | None = None) -> TextPerplexityResult:
    """Pooled perplexity of `texts` under a `StageModule` (see the module docstring)."""
    config = config or TextPerplexityConfig()
    was_training = module.backbone.training
    module.backbone.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(texts), config.batch_size):
        chunk = texts[start : start + config.batch_size]
        examples = [text_lm_example(module.tokenizer.encode(t)[: config.max_tokens], module.specials, text=t) for t in chunk]
        batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v
                 for k, v in collate(examples, module.specials.pad).items()}
        logits = module(batch).logits
        total += float(next_token_loss(logits, batch["labels"], reduction="sum"))
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
    module.backbone.train(was_training)
    nll = total / max(tokens, 1)
    return TextPerplexityResult(name, math.exp(nll), nll, len(texts), tokens)

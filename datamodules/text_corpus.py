"""Offline text for text-LM pretraining: Debian's fortunes, split by fortune into train / dev / held out.

Each fortune (a quotation, `sentences.read_fortunes`) goes to one split by a hash of its text, so the
split is the same on every machine and for every builder:

    dev       5% of fortunes: held-out text for perplexity (the forgetting measure of the grid)
    held_out  30%: never trained on here; the spoken StoryCloze sets are made from these
    train     the rest

`prepare_text_corpus(out_dir)` writes `text_train.jsonl.gz` and `text_dev.jsonl.gz` (`{"id", "text"}`,
one whitespace-normalised printable ASCII fortune per line). `TextCorpusDataModule` trains on them with the
text-LM task only (conf/pretrain_text.yaml), building them on first use.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from datamodules.datamodule import MostDataModule
from datamodules.mixing import SourceConfig
from datamodules.sentences import fortune_files, read_fortunes

DEV_PERCENT = 5
HELD_OUT_PERCENT = 30
MAX_CHARS = 1000
"""Longer fortunes (poems, scripts) are left out: one example fits a few-second batch."""


def fortune_split(text: str) -> str:
    """`train`, `dev` or `held_out` for a fortune, by a hash of its whitespace-normalised text."""
    bucket = int(hashlib.sha1(" ".join(text.split()).encode()).hexdigest(), 16) % 100
    if bucket < DEV_PERCENT:
        return "dev"
    return "held_out" if bucket < DEV_PERCENT + HELD_OUT_PERCENT else "train"


def text_corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where `prepare_text_corpus` writes the train and dev text."""
    return {split: Path(out_dir) / f"text_{split}.jsonl.gz" for split in ("train", "dev")}


def prepare_text_corpus(out_dir: str | Path = "data/text") -> dict[str, Path]:
    """Write the train and dev fortunes under `out_dir` (reused when both files exist)."""
    paths = text_corpus_paths(out_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    texts: dict[str, list[str]] = {"train": [], "dev": [], "held_out": []}
    for path in fortune_files():
        for fortune in read_fortunes(path):
            text = " ".join(fortune.split())
            if text.isascii() and text.isprintable() and len(text) <= MAX_CHARS:
                texts[fortune_split(text)].append(text)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        scratch = path.with_name(path.name + ".partial")
        with gzip.open(scratch, "wt", encoding="utf-8") as f:
            for i, text in enumerate(texts[split]):
                f.write(json.dumps({"id": f"fortune-{split}-{i:06d}", "text": text}) + "\n")
        scratch.rename(path)
    return paths


class TextCorpusDataModule(MostDataModule):
    """Text-LM batches from the fortunes' train split; the dev split for validation (perplexity)."""

    def __init__(
        self,
        corpus_dir: str = "data/text",
        tokenizer: str = "byte",
        max_duration: float = 60.0,
        num_buckets: int = 4,
        buffer_size: int = 500,
        text_tokens_per_second: float = 50.0,
        num_workers: int = 1,
        seed: int = 0,
    ) -> None:
        """Args are those of `MostDataModule` (text: duration = tokens / text_tokens_per_second), plus `corpus_dir`."""
        self.corpus_dir = corpus_dir
        paths = text_corpus_paths(corpus_dir)
        super().__init__(
            train_sources=[SourceConfig("fortunes", "text_lm", str(paths["train"]))],
            task_weights={"text_lm": 1.0},
            val_sources=[SourceConfig("fortunes", "text_lm", str(paths["dev"]))],
            tokenizer=tokenizer,
            max_duration=max_duration,
            num_buckets=num_buckets,
            buffer_size=buffer_size,
            max_cut_duration=max_duration,
            text_tokens_per_second=text_tokens_per_second,
            num_workers=num_workers,
            seed=seed,
        )

    def prepare_data(self) -> None:
        """Lightning hook: build the text files unless they are there."""
        prepare_text_corpus(self.corpus_dir)

    @property
    def feature_dim(self) -> None:
        """Text only: no audio features for the backbone to fit."""
        return None

"""Offline text for text-LM pretraining and evaluation: Debian's fortunes, split into train / dev / held out.

Each fortune (a quotation, `read_fortunes`) goes to one split by a hash of its text, so the
split is the same on every machine and for every builder:

    dev       5% of fortunes: held-out text for perplexity (the forgetting measure of the grid)
    held_out  30%: never trained on here; the spoken StoryCloze sets are made from these
    train     the rest

`prepare_text_corpus(out_dir)` writes `text_{train,dev,held_out}.jsonl.gz` (`{"id", "text", "category"}`,
one whitespace-normalised printable ASCII fortune per line; category = its fortune file). The spoken
StoryCloze builder (`lightning_most.evaluation.spoken_lm_miniature`) reads the held-out file, the `text`
evaluation suite the dev file. `datamodules.text_corpus.TextCorpusDataModule` trains on
train with the text-LM task only (conf/pretrain_text.yaml), building the files on first use; or
`python -m lightning_most.text_corpus [OUT_DIR]`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Not prose: pictures drawn with characters.
EXCLUDED_CATEGORIES: tuple[str, ...] = ("ascii-art",)


def fortune_files(root: Path = FORTUNES_DIR, exclude: tuple[str, ...] = EXCLUDED_CATEGORIES) -> list[Path]:
    """Fortune category files under `root` (sorted), without `off/` and the `exclude` categories."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"fortune directory {root} does not exist: install it with `apt-get install fortunes fortunes-min`."
        )
    files = [
        p
        for p in sorted(root.iterdir())
        if p.is_file() and not p.is_symlink() and not p.suffix and p.name not in exclude
    ]
    if not files:
        raise FileNotFoundError(f"no fortune category files in {root}: install `fortunes` and `fortunes-min`.")
    return files


def read_fortunes(path: Path) -> list[str]:
    """The quotations of one fortune file, attribution lines removed, whitespace collapsed."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    fortunes = []
    for block in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        lines = [line for line in block.splitlines() if not line.strip().startswith("--")]
        joined = " ".join(" ".join(lines).split())
        if joined:
            fortunes.append(joined)
    return fortunes


DEFAULT_TEXT_DIR = "data/text"
DEV_PERCENT = 5
HELD_OUT_PERCENT = 30
MAX_CHARS = 1000
"""Longer fortunes (poems, scripts) are left out: one example fits a few-second batch."""


def fortune_split(text: str) -> str:
    """`train`, `dev` or `held_out` for a fortune, by a hash of its lower-cased letters and digits (so copies
    that differ in quotes, punctuation or spacing, as in several fortune files, land in the same split)."""
    key = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100
    if bucket < DEV_PERCENT:
        return "dev"
    return "held_out" if bucket < DEV_PERCENT + HELD_OUT_PERCENT else "train"


SPLITS = ("train", "dev", "held_out")


def text_corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where `prepare_text_corpus` writes each split."""
    return {split: Path(out_dir) / f"text_{split}.jsonl.gz" for split in SPLITS}


def prepare_text_corpus(out_dir: str | Path = DEFAULT_TEXT_DIR) -> dict[str, Path]:
    """Write the fortunes of each split under `out_dir` (reused when every file exists)."""
    paths = text_corpus_paths(out_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    texts: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for path in fortune_files():
        for fortune in read_fortunes(path):
            text = " ".join(fortune.split())
            if text.isascii() and text.isprintable() and len(text) <= MAX_CHARS:
                texts[fortune_split(text)].append((text, path.name))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        scratch = path.with_name(path.name + ".partial")
        with gzip.open(scratch, "wt", encoding="utf-8") as f:
            for i, (text, category) in enumerate(texts[split]):
                f.write(json.dumps({"id": f"fortune-{split}-{i:06d}", "text": text, "category": category}) + "\n")
        scratch.rename(path)
    return paths


if __name__ == "__main__":
    import sys

    written = prepare_text_corpus(sys.argv[1] if len(sys.argv) > 1 else "data/text")
    print("\n".join(str(p) for p in written.values()))

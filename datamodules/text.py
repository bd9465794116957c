"""Text-only examples as lhotse cuts, streamed lazily from jsonl shards.

A text-LM example travels through the same mux / bucketing / distributed sampling as speech, so it
is a `MonoCut` without a recording: one supervision holding the text, and a *duration-equivalent*

    duration = len(tokenizer.encode(text)) / tokens_per_second

(default 50 tokens/s: one text token takes the batch room of one 50 Hz audio position), which is
what `max_duration` and the duration buckets see.

Shards are `.jsonl` or `.jsonl.gz` files of `{"text": ..., "id": ...}` lines ("id" optional); the
shards of the text-instruct task add `"prompt"` (the instruction; `text` is then the response,
`instructions.py`), kept as `custom["prompt"]` and counted in the duration-equivalent. A
source names one file, a folder (every `*.jsonl*` in it, sorted) or a glob. Files are opened with
lhotse's `open_best`, so URLs and `pipe:` commands work as they do for lhotse manifests. A line that
is not JSON or has no string "text" is passed on with `custom["text_error"]` set, and the filter
counts and names it (`quality.py`), never dropped silently.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.serialization import open_best

from lightning_most.tokenizer import build_tokenizer


def resolve_text_shards(path: str) -> list[str]:
    """The shard files a text source names: a URL or file as is, a folder's `*.jsonl*` files, or a glob."""
    if "://" in path or path.startswith("pipe:"):
        return [path]
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if ".jsonl" in f.name)
    elif p.is_file():
        files = [path]
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise FileNotFoundError(
            f"text source {path!r} names no .jsonl/.jsonl.gz file: give a file, a folder of shards or a glob."
        )
    return files


class LazyTextCuts:
    """Iterable of recording-less cuts, one per jsonl line of the shards (see the module docstring)."""

    def __init__(self, shards: list[str], tokenizer: str = "byte", tokens_per_second: float = 50.0) -> None:
        if tokens_per_second <= 0:
            raise ValueError(f"tokens_per_second must be > 0, got {tokens_per_second}")
        self.shards = shards
        self.tokenizer_name = tokenizer
        self.tokens_per_second = tokens_per_second
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def _count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return len(self._tokenizer.encode(text))

    def _cut(self, cut_id: str, text: object, error: str | None, prompt: str | None = None) -> MonoCut:
        tokens = self._count_tokens(text) if isinstance(text, str) else 0
        tokens += self._count_tokens(prompt) if prompt else 0
        duration = tokens / self.tokens_per_second
        supervision = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=duration, text=text)
        custom = {"text_error": error} if error else {}
        if prompt is not None:
            custom["prompt"] = prompt
        return MonoCut(id=cut_id, start=0.0, duration=duration, channel=0, supervisions=[supervision], custom=custom)

    def __iter__(self) -> Iterator[MonoCut]:
        for shard in self.shards:
            stem = Path(shard).name.split(".")[0]
            with open_best(shard, "r") as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    where = f"line {line_no} of {shard}"
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield self._cut(f"{stem}-{line_no}", None, f"{where} is not JSON ({e.msg})")
                        continue
                    if not isinstance(record, dict):
                        yield self._cut(f"{stem}-{line_no}", None, f"{where} is not a JSON object")
                        continue
                    cut_id = str(record.get("id", f"{stem}-{line_no}"))
                    text = record.get("text")
                    prompt = record.get("prompt")
                    error = None if isinstance(text, str) or text is None else f"{where} has a non-string text"
                    if prompt is not None and not isinstance(prompt, str):
                        error, prompt = f"{where} has a non-string prompt", None
                    yield self._cut(cut_id, text, error, prompt)


def text_cuts(path: str, tokenizer: str = "byte", tokens_per_second: float = 50.0) -> CutSet:
    """A lazy CutSet of the text examples of a text source (file, folder of shards, glob or URL)."""
    return CutSet(LazyTextCuts(resolve_text_shards(path), tokenizer, tokens_per_second))

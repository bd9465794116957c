"""Bad data: every problem a cut can have, how it is detected, and how skips are counted and reported.

Reasons (keys of every `skipped` Counter):

    zero_length       duration <= 0 (or audio that decodes to no samples / no frames)
    too_long          duration > max_cut_duration (text: its duration-equivalent)
    empty_text        no supervision, no text, or only whitespace
    non_text          text that is not a string, has no letter or digit, or holds control characters
    missing_audio     the audio file does not exist
    unreadable_audio  the audio exists but cannot be decoded (corrupt, truncated, unknown format)
    missing_units     a TTS cut without the `units` custom field, or whose units cannot be read
    unreadable_manifest  the rest of a cut manifest (`.jsonl.gz`, a Shar `cuts.*` file) that ends early or
                      is corrupt: one per torn file and pass (the cuts it still held are unknown)

The first four are read from the manifest, before batching (`CutChecker`, a sampler filter in the
main process); the rest show up when a worker loads the cut (`dataset.py`), or, for a source that
decodes its examples while streaming them (webdataset shards, Shar shards and manifests read to
their end, `shards.py`), as a placeholder cut (`unusable_cut`) whose
`custom["skip_reason"]` and `custom["skip_detail"]` the sampler filter counts. Each skip is counted
every time it happens (an infinite loader meets the same bad cut every pass) and logged as a warning
naming the cut id and the reason: once per cut id and reason by the sampler filter, once per batch
by a worker. Under DDP every rank's sampler reads the whole stream (and keeps every world_size-th
batch), so each rank's filter counts the bad manifest entries of the whole stream.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter

from lhotse import MonoCut
from lhotse.cut import Cut

SKIP_REASONS: tuple[str, ...] = (
    "zero_length",
    "too_long",
    "empty_text",
    "non_text",
    "missing_audio",
    "unreadable_audio",
    "missing_units",
    "unreadable_manifest",
)
log = logging.getLogger("datamodules")


class SkipLog:
    """A Counter of skips per reason that warns once per (cut id, reason)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._warned: set[tuple[str, str]] = set()

    def skip(self, cut_id: str, reason: str, detail: str = "") -> None:
        """Count one skip of `cut_id` for `reason` and warn about it the first time."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}: use one of {SKIP_REASONS}")
        self.counts[reason] += 1
        if (cut_id, reason) not in self._warned:
            self._warned.add((cut_id, reason))
            detail = detail.strip().splitlines()[0][:300] if detail.strip() else ""
            log.warning("skipping cut %s: %s%s", cut_id, reason, f" ({detail})" if detail else "")


def unusable_cut(cut_id: str, reason: str, detail: str) -> MonoCut:
    """A placeholder for an example that cannot be read: the sampler filter counts it under `reason`."""
    return MonoCut(id=cut_id, start=0.0, duration=0.0, channel=0, custom={"skip_reason": reason, "skip_detail": detail})


def cut_text(cut: Cut) -> object:
    """The text of a cut's first supervision (None without one)."""
    return cut.supervisions[0].text if cut.supervisions else None


def text_problem(text: object) -> str | None:
    """`empty_text` / `non_text` for an unusable transcript, None for a usable one."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return "empty_text"
    if not isinstance(text, str) or not any(ch.isalnum() for ch in text):
        return "non_text"
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch not in "\t\n" for ch in text) or "\ufffd" in text:
        return "non_text"
    return None


class CutChecker:
    """Sampler filter: keeps a cut only if its manifest entry is usable, counting the ones it drops."""

    def __init__(self, max_cut_duration: float, skips: SkipLog) -> None:
        self.max_cut_duration = max_cut_duration
        self.skips = skips

    def __call__(self, cut: Cut) -> bool:
        custom = cut.custom or {}
        reason, error = custom.get("skip_reason"), custom.get("skip_detail")  # a source's unreadable example
        if reason is None:
            error = custom.get("text_error")
            reason = "non_text" if error else text_problem(cut_text(cut))
        if reason is None and cut.duration <= 0:
            reason = "zero_length"
        if reason is None and cut.duration > self.max_cut_duration:
            reason, error = "too_long", f"{cut.duration:.2f} s > max_cut_duration={self.max_cut_duration}"
        if reason is None:
            return True
        self.skips.skip(cut.id, reason, error or "")
        return False

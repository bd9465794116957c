"""Sources and their mix: which corpora feed which task, with what weight, as one lazy CutSet.

A source is one corpus feeding one task. Its path is

    speech tasks (asr, tts,  a lhotse cut manifest (`.jsonl.gz`, local path or URL), a local Lhotse
    speech_instruct)         Shar folder (`shards.py`), or webdataset tar shards of audio + transcript
                             per key: a .tar file, a folder of them, a glob, a brace pattern
                             `shard-{000000..000009}.tar` or a URL (`webdataset_shards.py`); a spoken
                             instruction's supervision text is the response (`spoken_instructions.py`)
    text tasks (text_lm,     jsonl shards: a file, a folder of shards or a glob (`text.py`); text-instruct
    text_instruct)           lines add the prompt (`instructions.py`)

The probability of drawing from a source is `task_weights[task] * weight / (sum of the weights of
the task's sources)`: e.g. asr 0.4 split over LibriHeavy 3 : VoxPopuli 1 gives 0.3 and 0.1. The
sources are mixed with lhotse's `CutSet.mux` (seeded, so the stream is the same on every rank and
after a restart); with `infinite=True` every source repeats forever (cut ids get `_repeat{n}`), so
the mix ratios hold for the whole run. Every cut is tagged with `custom["task"]` and
`custom["source"]`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from lhotse import CutSet
from lhotse.cut import Cut

from datamodules.shards import read_manifest, read_shar
from datamodules.text import text_cuts
from datamodules.webdataset_shards import is_webdataset_path, read_webdataset
from lightning_most.batch import TASKS, TEXT_ONLY_TASKS, Task

STAGE1_TASK_WEIGHTS: dict[str, float] = {Task.ASR.value: 0.4, Task.TTS.value: 0.4, Task.TEXT_LM.value: 0.2}
"""MoST's stage-1 mix (plain-string keys, as a YAML `task_weights` holds them)."""
STAGE2_TASK_WEIGHTS: dict[str, float] = {
    Task.SPEECH_INSTRUCT.value: 0.4, Task.TEXT_INSTRUCT.value: 0.4, Task.ASR.value: 0.1, Task.TTS.value: 0.1
}
"""MoST's stage-2 mix."""


@dataclass
class SourceConfig:
    """One corpus feeding one task."""

    name: str
    """Corpus name (logs, skip counts); unique within a task."""
    task: str
    """`asr`, `tts`, `speech_instruct` (speech corpora) or `text_lm`, `text_instruct` (text shards)."""
    path: str
    """Speech: cut manifest (.jsonl.gz, path or URL), Lhotse Shar folder or webdataset shards (.tar file, folder, glob,
    brace pattern); text: jsonl file/folder/glob."""
    weight: float = 1.0
    """Relative weight of this corpus among the sources of its task."""


def validate_mix(sources: list[SourceConfig], task_weights: dict[str, float], field: str = "train_sources") -> None:
    """Raise a ValueError naming the bad field if the sources and weights do not make a mix."""
    if not sources:
        raise ValueError(f"`{field}` is empty: list at least one source (name, task, path).")
    seen = set()
    for s in sources:
        if s.task not in TASKS:
            raise ValueError(f"{field}: source {s.name!r} has unknown task {s.task!r}; tasks are {', '.join(TASKS)}.")
        if (s.name, s.task) in seen:
            raise ValueError(f"{field}: source {s.name!r} appears twice for task {s.task!r}.")
        seen.add((s.name, s.task))
        if s.weight < 0:
            raise ValueError(f"{field}: source {s.name!r} has negative weight {s.weight}.")
    fed = {s.task for s in sources}
    for task, weight in task_weights.items():
        if task not in fed:
            raise ValueError(
                f"task_weights names {task!r}, which no source in `{field}` feeds (they feed {sorted(fed)}): "
                f"add a source with task {task!r} or remove it from task_weights."
            )
        if weight < 0:
            raise ValueError(f"task_weights[{task!r}] = {weight} is negative.")
    unweighted = sorted(fed - set(task_weights))
    if unweighted:
        raise ValueError(
            f"`{field}` feeds task(s) {unweighted} that task_weights gives no weight: add them to task_weights."
        )
    if sum(task_weights.values()) <= 0:
        raise ValueError(f"task_weights {task_weights} are all zero: give at least one task a positive weight.")
    for task, weight in task_weights.items():
        if weight > 0 and sum(s.weight for s in sources if s.task == task) <= 0:
            raise ValueError(f"task {task!r} has weight {weight} but all its sources in `{field}` have weight 0.")


def source_weights(sources: list[SourceConfig], task_weights: dict[str, float]) -> list[float]:
    """Normalised probability of drawing from each source (see the module docstring)."""
    total = sum(task_weights.values())
    task_sums = {t: sum(s.weight for s in sources if s.task == t) for t in task_weights}
    return [task_weights[s.task] / total * s.weight / task_sums[s.task] if task_sums[s.task] else 0.0 for s in sources]


def tag_cut(cut: Cut, task: str, source: str) -> Cut:
    """Mark a cut with the task it is drawn for and the source it comes from."""
    cut.custom = {**(cut.custom or {}), "task": task, "source": source}
    return cut


def open_source(
    source: SourceConfig, tokenizer: str, tokens_per_second: float, seed: int, shuffle_shards: bool = True
) -> CutSet:
    """The lazy CutSet of one source, each cut tagged with its task and source (Shar/webdataset shards shuffled per pass)."""
    if source.task in TEXT_ONLY_TASKS:
        cuts = text_cuts(source.path, tokenizer, tokens_per_second)
    elif is_webdataset_path(source.path):
        cuts = read_webdataset(source.path, seed=seed, shuffle_shards=shuffle_shards)
    elif Path(source.path).is_dir():
        cuts = read_shar(source.path, seed=seed, shuffle_shards=shuffle_shards)
    elif "://" in source.path or Path(source.path).is_file():
        cuts = read_manifest(source.path)
    else:
        raise FileNotFoundError(
            f"source {source.name!r} ({source.task}): {source.path} is neither a cut manifest file, a Shar folder nor webdataset .tar shards; "
            "build it first (`python -m lightning_most prepare`, or datamodules.recipes) or fix its `path`."
        )
    return cuts.map(functools.partial(tag_cut, task=source.task, source=source.name))


def mix_sources(
    sources: list[SourceConfig],
    task_weights: dict[str, float],
    tokenizer: str = "byte",
    tokens_per_second: float = 50.0,
    seed: int = 0,
    infinite: bool = True,
) -> CutSet:
    """One lazy CutSet drawing from every source with its normalised weight (see the module docstring)."""
    validate_mix(sources, task_weights)
    weights = source_weights(sources, task_weights)
    kept = [(s, w) for s, w in zip(sources, weights) if w > 0]
    cutsets = [open_source(s, tokenizer, tokens_per_second, seed) for s, _ in kept]
    if infinite:
        cutsets = [c.repeat() for c in cutsets]
    if len(cutsets) == 1:
        return cutsets[0]
    return CutSet.mux(*cutsets, weights=[w for _, w in kept], seed=seed)

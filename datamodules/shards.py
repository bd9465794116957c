"""Shards: any CutSet to Lhotse Shar and back (lazily), and text examples to jsonl shards.

Lhotse Shar layout of `export_shar(cuts, out_dir)` (one row per shard of `shard_size` cuts):

    out_dir/cuts.000000.jsonl.gz        cut manifests (supervisions: transcripts, speakers)
    out_dir/recording.000000.tar        audio, re-encoded as `audio_format` (flac by default)
    out_dir/features.000000.tar         precomputed features (lilcom), when the cuts have them
    out_dir/units.000000.tar            discrete units (numpy), when the cuts have the `units` field
    ...                                 one more tar per other custom array (numpy) or audio field

Every data field the first cut carries is exported (audio, features, custom arrays). Reading back
(`read_shar`) is lazy and sequential: each tar is streamed and its payload attached to the cut, so a
training run reads shards front to back. `read_shar` takes a local folder, or a dict of field ->
shard URLs (`s3://`, `https://`, `pipe:...`), which lhotse opens with its own openers (smart_open,
pipes). Shards are shuffled per pass when `shuffle_shards` is set, reproducibly for a seed.

Text shards (`write_text_shards`): `out_dir/text.000000.jsonl.gz`, lines `{"id", "text"}`, read by
`text.py`. Note lhotse's `to_shar` does not create its output folder: `export_shar` does.

Command line (a cut manifest with its audio, stored features and units, as Shar):

    python -m datamodules.shards --cuts data/units/libriheavy_cuts_large.jsonl.gz --out_dir data/shar/libriheavy_large
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from lhotse import CutSet, Recording
from lhotse.array import Array, TemporalArray
from lhotse.cut import Cut


def shar_fields(cut: Cut, audio_format: str = "flac") -> dict[str, str]:
    """The Shar fields (name -> storage format) that hold every data item of `cut`."""
    fields = {}
    if cut.has_recording:
        fields["recording"] = audio_format
    if cut.has_features:
        fields["features"] = "lilcom"
    for name, value in (cut.custom or {}).items():
        if isinstance(value, (Array, TemporalArray)):
            fields[name] = "numpy"
        elif isinstance(value, Recording):
            fields[name] = audio_format
    return fields


def export_shar(
    cuts: CutSet, out_dir: str | Path, shard_size: int = 1000, audio_format: str = "flac", num_jobs: int = 1
) -> dict[str, list[str]]:
    """Write `cuts` with all their data (audio, features, units, ...) as Lhotse Shar; returns field -> shard paths."""
    first = next(iter(cuts), None)
    if first is None:
        raise ValueError(f"export_shar: the CutSet to write to {out_dir} is empty.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return cuts.to_shar(out, fields=shar_fields(first, audio_format), shard_size=shard_size, num_jobs=num_jobs)


def read_shar(source: str | Path | dict[str, list[str]], seed: int = 0, shuffle_shards: bool = True) -> CutSet:
    """Lazily stream a Shar folder (or field -> shard URL lists) written by `export_shar`."""
    if isinstance(source, dict):
        return CutSet.from_shar(fields=source, shuffle_shards=shuffle_shards, seed=seed)
    in_dir = Path(source)
    if not any(in_dir.glob("cuts.*.jsonl*")):
        raise FileNotFoundError(f"{in_dir} holds no Shar `cuts.NNNNNN.jsonl.gz` file: write it with export_shar.")
    return CutSet.from_shar(in_dir=in_dir, shuffle_shards=shuffle_shards, seed=seed)


def write_text_shards(records: Iterable[dict], out_dir: str | Path, shard_size: int = 100_000) -> list[Path]:
    """Write `{"id", "text"}` records as `text.NNNNNN.jsonl.gz` shards of `shard_size` lines."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    it = iter(records)
    while chunk := list(islice(it, shard_size)):
        paths.append(out / f"text.{len(paths):06d}.jsonl.gz")
        with gzip.open(paths[-1], "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(record) + "\n" for record in chunk)
    return paths


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    """Command line: `python -m datamodules.shards --cuts CUTS --out_dir DIR [--shard_size N]` (export_shar)."""
    from jsonargparse import ArgumentParser
    from lhotse import load_manifest_lazy

    parser = ArgumentParser(prog="datamodules.shards", description=main.__doc__)
    parser.add_argument("--cuts", type=str, required=True, help="Cut manifest to export.")
    parser.add_argument("--out_dir", type=str, required=True, help="Folder of the Shar shards.")
    parser.add_argument("--shard_size", type=int, default=1000, help="Cuts per shard.")
    parser.add_argument("--audio_format", type=str, default="flac")
    parser.add_argument("--num_jobs", type=int, default=1)
    args = parser.parse_args(argv)
    if not Path(args.cuts).is_file():
        raise FileNotFoundError(f"--cuts {args.cuts}: no such cut manifest.")
    return export_shar(load_manifest_lazy(args.cuts), args.out_dir, args.shard_size, args.audio_format, args.num_jobs)


if __name__ == "__main__":
    main()

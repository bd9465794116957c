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

A torn file never ends the stream nor loses cuts silently (`CheckedShar`, `CheckedManifest`): a data
tar (`recording.*`, `units.*`, ...) that ends early or is corrupt yields a placeholder for each cut of
its shard it could not deliver (`unreadable_audio`, named in the warning with the file), and a cut
manifest that does (a Shar `cuts.*.jsonl.gz`, or a `.jsonl.gz` manifest source) yields the cuts before
the tear and one `unreadable_manifest` placeholder; the sampler filter counts and names them
(`quality.py`). A pass that delivers no cut at all raises a ValueError naming the files and the fix.

Text shards (`write_text_shards`): `out_dir/text.000000.jsonl.gz`, lines `{"id", "text"}`, read by
`text.py`. Note lhotse's `to_shar` does not create its output folder: `export_shar` does.

Command line (a cut manifest with its audio, stored features and units, as Shar):

    python -m datamodules.shards --cuts data/units/libriheavy_cuts_large.jsonl.gz --out_dir data/shar/libriheavy_large
"""

from __future__ import annotations

import gzip
import json
import random
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from lhotse import CutSet, Recording
from lhotse.array import Array, TemporalArray
from lhotse.cut import Cut
from lhotse.lazy import LazyJsonlIterator, LazyManifestIterator
from lhotse.shar.readers.lazy import LazySharIterator

from datamodules.quality import unusable_cut
from lightning_most.errors import UnusableDataError

READ_ERRORS = (EOFError, OSError, tarfile.TarError, zlib.error, ValueError, AssertionError)
"""What reading a torn or corrupt gzip / tar / jsonl raises (lhotse asserts that a tar member matches its cut)."""


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
    """Lazily stream a Shar folder (or field -> shard URL lists) written by `export_shar`, torn shards counted."""
    if isinstance(source, dict):
        return CutSet(CheckedShar(LazySharIterator(fields=source).shards, seed, shuffle_shards))
    in_dir = Path(source)
    if not any(in_dir.glob("cuts.*.jsonl*")):
        raise FileNotFoundError(f"{in_dir} holds no Shar `cuts.NNNNNN.jsonl.gz` file: write it with export_shar.")
    return CutSet(CheckedShar(LazySharIterator(in_dir=in_dir).shards, seed, shuffle_shards))


def read_manifest(path: str | Path) -> CutSet:
    """Lazily stream a cut manifest (`.jsonl.gz`, path or URL); a torn one yields its cuts up to the tear, counted."""
    return CutSet(CheckedManifest(path))


def _cuts_until_torn(path: str | Path, error: list[Exception]) -> Iterator[Cut]:
    """The cuts of manifest `path` up to where it cannot be read; the error, if any, is appended to `error`."""
    try:
        yield from LazyManifestIterator(path)
    except READ_ERRORS as exc:
        error.append(exc)


def _torn_manifest(path: str | Path, read: int, exc: Exception) -> Cut:
    return unusable_cut(
        f"{Path(str(path)).name}/after-{read}-cuts", "unreadable_manifest",
        f"cut manifest {path} cannot be read past its first {read} cuts (truncated or corrupt: {exc!r}); rebuild or "
        "re-copy it",
    )


def _reads_to_end(path: str | Path) -> bool:
    """Whether a Shar data file (tar, or jsonl for a text field) reads whole; a remote one is not checked (True)."""
    if "://" in str(path) or str(path).startswith("pipe:"):
        return True
    try:
        if ".tar" in Path(path).name:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile():
                        tar.extractfile(member).read()
        else:
            for _ in LazyJsonlIterator(path):
                pass
    except READ_ERRORS:
        return False
    return True


class CheckedManifest:
    """Iterable of a manifest's cuts; a torn manifest ends with an `unreadable_manifest` placeholder (module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[Cut]:
        error: list[Exception] = []
        read = 0
        for cut in _cuts_until_torn(self.path, error):
            read += 1
            yield cut
        if error and not read:
            raise UnusableDataError(
                f"cut manifest {self.path} holds no readable cut (truncated or corrupt: {error[0]!r}): rebuild it "
                "(`python -m lightning_most prepare`, datamodules.recipes) or copy it again"
            )
        if error:
            yield _torn_manifest(self.path, read, error[0])


class CheckedShar:
    """Iterable of the cuts of Shar shards, read one shard at a time by lhotse, torn shards counted (module doc).

    The shards are shuffled per pass with `random.Random(seed + pass)`, the order lhotse's own reader uses.
    """

    def __init__(self, shards: list[dict[str, str | Path]], seed: int = 0, shuffle_shards: bool = True) -> None:
        self.shards = shards
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.passes = 0

    def _shard_cuts(self, shard: dict[str, str | Path]) -> Iterator[Cut]:
        delivered: set[str] = set()
        error: Exception | None = None
        try:
            for cut in LazySharIterator(fields={field: [path] for field, path in shard.items()}, shuffle_shards=False):
                delivered.add(cut.id)
                yield cut
        except READ_ERRORS as exc:
            error = exc
        manifest_error: list[Exception] = []
        ids = [cut.id for cut in _cuts_until_torn(shard["cuts"], manifest_error)]
        missing = [i for i in ids if i not in delivered]  # a data file that ends early or is corrupt
        if missing:
            data = [path for field, path in shard.items() if field != "cuts"]
            torn = ", ".join(str(path) for path in data if not _reads_to_end(path)) or ", ".join(map(str, data))
            for cut_id in missing:
                yield unusable_cut(cut_id, "unreadable_audio", f"Shar file {torn} ends before this cut's data or is "
                                   f"corrupt ({error!r}); write the shard again with export_shar, or copy it again")
        if manifest_error:
            yield _torn_manifest(shard["cuts"], len(ids), manifest_error[0])

    def __iter__(self) -> Iterator[Cut]:
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed + self.passes).shuffle(order)
        usable = 0
        for shard in order:
            for cut in self._shard_cuts(shard):
                usable += "skip_reason" not in (cut.custom or {})
                yield cut
        if not usable:
            names = ", ".join(str(shard["cuts"]) for shard in self.shards[:3]) + (" ..." if len(self.shards) > 3 else "")
            raise UnusableDataError(
                f"Shar shards {names} hold no readable cut (every shard is truncated or corrupt; the warnings name "
                "them): write them again with export_shar, or copy them again"
            )
        self.passes += 1


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

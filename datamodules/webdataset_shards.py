"""Speech corpora as webdataset tar shards: read them as a lazy CutSet source, and write a CutSet as shards.

The layout is the common webdataset speech layout: one tar member per field, all fields of one
example sharing a key (the member name up to its first dot), e.g. `tar tf shard-000000.tar`:

    1089-134686-0000.flac           audio: .flac, .wav, .mp3, .ogg or .opus (decoded by soundfile)
    1089-134686-0000.txt            transcript (UTF-8)
    1089-134686-0000.json           optional {"text", "speaker", "language", "id", "units_frame_shift"}
    1089-134686-0000.units.npy      optional discrete units (T,) int: the TTS targets (`cut.load_units()`)
    1089-134686-0001.flac
    1089-134686-0001.txt
    ...

The transcript is the `.txt` member, or else the `.json` member's "text" field; the cut id is the
json "id" if given, else the key. Every key becomes one `MonoCut` whose audio stays in memory (no
file on disk), with one supervision (text, speaker, language) and, with `.units.npy`, the custom
tensor `units`. A source `path` (`mixing.SourceConfig`) names the shards as

    a file                 data/wds/shard-000000.tar
    a folder               data/wds/              (every *.tar / *.tar.gz / *.tgz in it, sorted)
    a glob                 data/wds/shard-*.tar
    a brace pattern        data/wds/shard-{000000..000009}.tar
    a URL or a pipe        https://host/shard-{000000..000009}.tar, pipe:aws s3 cp s3://b/shard-000000.tar -

(URLs and pipes are opened by webdataset's `gopen`.) Shards are streamed front to back by
webdataset's tar iterator (`tarfile_samples`), in an order shuffled per full pass when
`shuffle_shards` is set, with `random.Random(seed + pass)`: the same order on every rank and after a
restart, so the loader's exact resume (`loader.py`) replays the same stream (every DDP rank reads
every shard, as with manifests and Shar, and keeps its share of the batches). (As for Shar, the pass
counter restarts with the loader: with `infinite=True`, the default, a whole run is one pass sequence
and resumes exactly; with `infinite=False` a resumed epoch > 0 reads its shards in pass-0 order.)

Bad members are never dropped silently. A key without an audio member (`missing_audio`), with audio
soundfile cannot decode (`unreadable_audio`), and a shard that cannot be opened or ends early (a
truncated tar: `unreadable_audio`, once per shard, its cut-short key included) become placeholder
cuts carrying `custom["skip_reason"]` / `custom["skip_detail"]`, which the sampler filter counts
and names (`quality.py`); a key without a transcript is counted as `empty_text`, a transcript that
is not UTF-8 or not a string as `non_text`; audio whose header reads but whose body does not decode
is counted by the worker that loads it. A pass over every shard that finds no usable example raises
a ValueError naming the shards. Lhotse's own `export_to_webdataset` layout (pickled cuts, `KEY.data`)
is refused: unpickling a stranger's tar would run its code.

Writing: `export_webdataset(cuts, out_dir, shard_size)` writes `out_dir/shard-NNNNNN.tar` of
`shard_size` keys each in the layout above (audio re-encoded as lossless 16-bit FLAC by default);
command line `python -m lightning_most export_webdataset --cuts CUTS --out_dir DIR`.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment, load_manifest_lazy
from lhotse.cut import Cut
from webdataset import ShardWriter
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from datamodules.quality import cut_text, text_problem, unusable_cut
from datamodules.shards import read_shar
from lightning_most.errors import UnusableDataError

AUDIO_EXTENSIONS: tuple[str, ...] = ("flac", "wav", "mp3", "ogg", "opus")
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")
UNITS_MEMBER = "units.npy"
SHARD_PATTERN = "shard-%06d.tar"
_REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)")
_SHARD_NAME = re.compile(r"\.(tar|tar\.gz|tgz)(\s|$)")
log = logging.getLogger("datamodules")


def is_webdataset_path(path: str) -> bool:
    """Whether a source path names webdataset shards: a tar file, glob, brace pattern, URL or pipe, or a folder
    of tar files that is not a Lhotse Shar folder (which holds `cuts.*.jsonl.gz` beside its tars)."""
    p = Path(path)
    if p.is_dir():
        return not any(p.glob("cuts.*.jsonl*")) and any(f.name.endswith(SHARD_SUFFIXES) for f in p.iterdir())
    return bool(_SHARD_NAME.search(path.strip()))


def resolve_webdataset_shards(path: str) -> list[str]:
    """The shards a source path names (see the module docstring); local ones must exist."""
    p = Path(path)
    if p.is_dir():
        shards = sorted(str(f) for f in p.iterdir() if f.name.endswith(SHARD_SUFFIXES))
    else:
        shards = []
        for url in expand_urls(path):
            is_glob = not _REMOTE.match(url) and any(ch in url for ch in "*?[")
            shards.extend(sorted(glob.glob(url)) if is_glob else [url])
    missing = [s for s in shards if not _REMOTE.match(s) and not Path(s).is_file()]
    if not shards or missing:
        problem = f"names missing shard files {missing[:3]}" if missing else "names no shard file"
        raise FileNotFoundError(
            f"webdataset source {path!r} {problem}: give a .tar file, a folder of .tar shards, a glob or a brace "
            "pattern (shard-{000000..000009}.tar); write shards with `python -m lightning_most export_webdataset`."
        )
    return shards


def _decode_text(sample: dict, meta: dict, where: str) -> tuple[object, str | None]:
    """The transcript of a sample and, for an unusable one, why (`text_error`)."""
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8").strip(), None
        except UnicodeDecodeError as e:
            return None, f"{where}.txt is not UTF-8 ({e.reason})"
    text = meta.get("text")
    return text, None if text is None or isinstance(text, str) else f"{where}.json has a non-string text"


def _read_meta(sample: dict, where: str) -> tuple[dict, str | None]:
    """The `.json` member as a dict ({} without one) and, if it is unreadable, why."""
    if "json" not in sample:
        return {}, None
    try:
        meta = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, f"{where}.json is not JSON ({e})"
    return (meta, None) if isinstance(meta, dict) else ({}, f"{where}.json is not a JSON object")


def sample_to_cut(sample: dict) -> Cut:
    """One webdataset sample (key -> member bytes) as a cut with in-memory audio, or a placeholder saying why not."""
    key, url = sample["__key__"], sample.get("__url__", "?")
    where = f"{url}: {key}"
    audio_ext = next((ext for ext in AUDIO_EXTENSIONS if ext in sample), None)
    members = sorted(k for k in sample if not k.startswith("__"))
    if audio_ext is None and "data" in sample:
        raise ValueError(
            f"{url} holds lhotse `export_to_webdataset` shards (pickled cuts, {key}.data): they are not read, since "
            "unpickling a stranger's tar runs its code. Re-export the audio + transcript layout with "
            "`python -m lightning_most export_webdataset` (or Lhotse Shar)."
        )
    if audio_ext is None:
        return unusable_cut(key, "missing_audio", f"{where} has no audio member ({AUDIO_EXTENSIONS}); it has {members}")
    try:
        recording = Recording.from_bytes(sample[audio_ext], key)
    except Exception as e:  # noqa: BLE001 -- audio backends raise many types for undecodable bytes
        return unusable_cut(key, "unreadable_audio", f"{where}.{audio_ext} cannot be decoded: {e}")
    meta, meta_error = _read_meta(sample, where)
    text, text_error = _decode_text(sample, meta, where)
    cut_id = str(meta.get("id", key))
    supervision = SupervisionSegment(
        id=cut_id, recording_id=key, start=0.0, duration=recording.duration, text=text,
        speaker=meta.get("speaker"), language=meta.get("language"),
    )
    error = text_error or (meta_error if text is None else None)
    cut = MonoCut(
        id=cut_id, start=0.0, duration=recording.duration, channel=0, recording=recording,
        supervisions=[supervision], custom={"text_error": error} if error else None,
    )
    if UNITS_MEMBER in sample:
        try:
            units = np.load(io.BytesIO(sample[UNITS_MEMBER]), allow_pickle=False)  # (T,): never unpickles
            frame_shift = float(meta.get("units_frame_shift", recording.duration / max(len(units), 1)))
            cut = cut.attach_tensor("units", units, frame_shift=frame_shift, temporal_dim=0)
        except (ValueError, OSError, EOFError) as e:  # a TTS cut without units: counted as missing_units when laid out
            log.warning("%s.%s is unreadable, the cut has no units: %s", where, UNITS_MEMBER, e)
    return cut


def _has_audio_and_text(sample: dict) -> bool:
    return any(ext in sample for ext in AUDIO_EXTENSIONS) and ("txt" in sample or "json" in sample)


class LazyWebdatasetCuts:
    """Iterable of the cuts of webdataset shards, one per key, shards shuffled per pass (see the module docstring)."""

    def __init__(self, shards: list[str], seed: int = 0, shuffle_shards: bool = True) -> None:
        self.shards = shards
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.passes = 0  # full passes so far: pass p reads the shards shuffled by Random(seed + p)

    def shard_order(self) -> list[str]:
        """The order the next pass reads the shards in."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed + self.passes).shuffle(order)
        return order

    def _shard_cuts(self, shard: str, outcomes: Counter) -> Iterator[Cut]:
        errors: list[Exception] = []

        def keep_going(exn: Exception) -> bool:
            errors.append(exn)
            return True

        for sample in tarfile_samples([{"url": shard}], handler=keep_going):
            if errors and not _has_audio_and_text(sample):
                continue  # the key the error cut short: counted once below, with its shard
            cut = sample_to_cut(sample)
            reason = (cut.custom or {}).get("skip_reason")
            outcomes[reason or ("usable" if text_problem(cut_text(cut)) is None else "no_text")] += 1
            yield cut
        if errors:
            reason = "missing_audio" if isinstance(errors[0], FileNotFoundError) else "unreadable_audio"
            outcomes[reason] += 1
            detail = f"{shard} cannot be read to its end (truncated or corrupt tar?): {errors[0]}"
            yield unusable_cut(f"{Path(shard).name}/unreadable", reason, detail)

    def __iter__(self) -> Iterator[Cut]:
        outcomes: Counter = Counter()
        for shard in self.shard_order():
            yield from self._shard_cuts(shard, outcomes)
        if not outcomes["usable"]:
            raise UnusableDataError(
                f"webdataset shards {self.shards[:3]}{' ...' if len(self.shards) > 3 else ''} hold no usable example "
                f"(keys seen: {dict(outcomes)}): each key needs an audio member ({', '.join(AUDIO_EXTENSIONS)}) and a "
                "transcript (KEY.txt, or KEY.json with a 'text' field); the skipped keys are named in the warnings."
            )
        self.passes += 1


def read_webdataset(path: str, seed: int = 0, shuffle_shards: bool = True) -> CutSet:
    """A lazy CutSet of the webdataset shards a source path names (file, folder, glob, brace pattern, URL)."""
    return CutSet(LazyWebdatasetCuts(resolve_webdataset_shards(path), seed=seed, shuffle_shards=shuffle_shards))


def webdataset_sample(cut: Cut, audio_format: str = "flac") -> dict[str, object]:
    """One cut as a webdataset sample (member suffix -> bytes) of the layout in the module docstring."""
    key = cut.id.replace(".", "_")  # webdataset splits a member name at its first dot: the key must have none
    audio = cut.load_audio()  # (C, S)
    buffer = io.BytesIO()
    sf.write(buffer, audio.T, cut.sampling_rate, format=audio_format.upper(), subtype="PCM_16")
    sample: dict[str, object] = {"__key__": key, audio_format: buffer.getvalue()}
    supervision = cut.supervisions[0] if cut.supervisions else None
    if supervision is not None and supervision.text is not None:
        sample["txt"] = supervision.text.encode("utf-8")
    meta = {"id": cut.id} if key != cut.id else {}
    if supervision is not None:
        meta.update({k: v for k, v in (("speaker", supervision.speaker), ("language", supervision.language)) if v})
    if cut.has_custom("units"):
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(cut.load_units()), allow_pickle=False)
        sample[UNITS_MEMBER] = buffer.getvalue()
        meta["units_frame_shift"] = cut.units.frame_shift
    if meta:
        sample["json"] = json.dumps(meta).encode("utf-8")
    return sample


@dataclass
class WebdatasetExport:
    """What `export_webdataset` wrote."""

    shards: list[Path]
    """The shard files, in order."""
    written: int
    """Cuts written."""
    skipped: Counter = field(default_factory=Counter)
    """Cuts not written, per reason (`missing_recording`, `unreadable_audio`)."""


def export_webdataset(
    cuts: CutSet, out_dir: str | Path, shard_size: int = 1000, audio_format: str = "flac"
) -> WebdatasetExport:
    """Write `cuts` as `out_dir/shard-NNNNNN.tar` of `shard_size` keys: audio, transcript, metadata, units.

    A cut without a recording or whose audio cannot be loaded is skipped, warned about and counted.
    """
    if shard_size < 1:
        raise ValueError(f"export_webdataset: shard_size must be >= 1, got {shard_size}.")
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"export_webdataset: audio_format={audio_format!r}; use 'flac' (lossless, small) or 'wav'.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = WebdatasetExport(shards=[], written=0)
    writer = None
    for cut in cuts:
        if not cut.has_recording:
            result.skipped["missing_recording"] += 1
            log.warning("export_webdataset: cut %s has no recording, not written", cut.id)
            continue
        try:
            sample = webdataset_sample(cut, audio_format)
        except Exception as e:  # noqa: BLE001 -- lhotse surfaces missing/corrupt audio as many exception types
            result.skipped["unreadable_audio"] += 1
            log.warning("export_webdataset: the audio of cut %s cannot be loaded, not written: %s", cut.id, e)
            continue
        if writer is None:  # opened on the first cut: an export of nothing leaves no empty shard behind
            # mtime=0: the same cuts give the same bytes, and integer times need no per-member pax header (a float
            # mtime adds one, which doubles the time a reader spends in tar headers)
            writer = ShardWriter(
                str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0, encoder=False, mtime=0,
                post=lambda fname: result.shards.append(Path(fname)),
            )
        writer.write(sample)
        result.written += 1
    if writer is None:
        raise ValueError(f"export_webdataset: no cut to write to {out} (skipped: {dict(result.skipped)}).")
    writer.close()
    return result


def open_cuts(path: str) -> CutSet:
    """The cuts to export: a lhotse cut manifest or a Lhotse Shar folder, in their stored order."""
    if Path(path).is_dir():
        return read_shar(path, shuffle_shards=False)
    if not Path(path).is_file() and "://" not in path:
        raise FileNotFoundError(f"--cuts {path}: no such cut manifest or Shar folder.")
    return load_manifest_lazy(path)


def main(argv: list[str] | None = None) -> WebdatasetExport:
    """Write a cut manifest or Shar folder as webdataset tar shards.

    Command line: `python -m lightning_most export_webdataset --cuts CUTS --out_dir DIR [--shard_size N]`.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lightning_most export_webdataset", description=export_webdataset.__doc__)
    parser.add_argument("--cuts", type=str, required=True, help="Cut manifest (.jsonl.gz) or Lhotse Shar folder.")
    parser.add_argument("--out_dir", type=str, required=True, help="Output folder of the shard-NNNNNN.tar files.")
    parser.add_argument("--shard_size", type=int, default=1000, help="Keys (utterances) per shard.")
    parser.add_argument("--audio_format", type=str, default="flac", help="flac (lossless, small) or wav.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = export_webdataset(open_cuts(args.cuts), args.out_dir, args.shard_size, args.audio_format)
    print(f"wrote {result.written} utterances to {len(result.shards)} shards in {args.out_dir}; "
          f"skipped {dict(result.skipped)}")
    return result


if __name__ == "__main__":
    main()

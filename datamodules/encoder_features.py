"""Store frozen encoder states (Whisper or HuBERT) with the cuts, so that training reads them instead of encoding.

`store_encoder_features(cuts, storage_dir, features)` encodes every cut's audio once with the
`FeatureConfig`'s encoder (kind "whisper": `WhisperEncoder`; kind "hubert": the `hubert_layer` of
`HubertEncoder`) and returns the cuts with a lhotse `Features` manifest attached (`type` from
`dataset.stored_feature_type`, which names the HuBERT layer, 20 ms frame shift, float16 `.npy` files under `storage_dir`). A cut
whose audio cannot be read keeps no features, is counted per reason (`quality.SKIP_REASONS`) and
is skipped later by the dataset like any unreadable cut.

`prepare_encoder_features(cuts_path, out_path, storage_dir, features)` does it for a manifest file
and is idempotent: a `.json` stamp beside `out_path` records the source manifest's size and mtime
and the encoder, and a stamp that matches means the stored features are reused (`read_stamp` gives
it to later steps: `datamodules.units` clusters the stored HuBERT states when the stamp names its
HuBERT folder and layer). For a corpus on disk:

    python -m datamodules.encoder_features --cuts data/libriheavy/libriheavy_cuts_small.jsonl.gz \\
        --out data/libriheavy_hubert/libriheavy_cuts_small.jsonl.gz \\
        --features.kind hubert --features.hubert_path checkpoints/hubert-large-ll60k --features.hubert_layer 11
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from lhotse import CutSet, load_manifest_lazy
from lhotse.features.base import Features
from lhotse.features.io import NumpyFilesWriter
from tqdm import tqdm

from datamodules.dataset import CutLoadError, MostDataset, stored_feature_type
from lightning_most.audio import SAMPLE_RATE
from lightning_most.audio.features import FeatureConfig, InputFeatures
from lightning_most.audio.units import array_key

log = logging.getLogger(__name__)
ENCODER_NAMES = {"whisper": "Whisper", "hubert": "HuBERT"}  # FeatureConfig.kind -> name in progress lines


def _encoder(features: FeatureConfig, extractor: InputFeatures):
    if stored_feature_type(features) is None:
        raise ValueError(f"stored encoder states need FeatureConfig.kind in {sorted(ENCODER_NAMES)}, got {features.kind!r}")
    return extractor.whisper if features.kind == "whisper" else extractor.hubert


def store_encoder_features(
    cuts: CutSet, storage_dir: str | Path, features: FeatureConfig, num_threads: int = 0
) -> tuple[CutSet, Counter]:
    """Encode each cut's audio with the encoder of `features`; return the cuts with `features` and the skips."""
    extractor = InputFeatures(features, num_threads=num_threads)
    frame_shift = 1.0 / _encoder(features, extractor).frame_rate
    feature_type = stored_feature_type(features)
    skipped: Counter = Counter()
    out = []
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    total = None if cuts.is_lazy else len(cuts)
    with NumpyFilesWriter(storage_dir) as writer:
        for cut in tqdm(cuts, total=total, desc=f"{ENCODER_NAMES[features.kind]} features -> {storage_dir}", unit="cut"):
            try:
                audio = MostDataset._load_audio(cut if cut.sampling_rate == SAMPLE_RATE else cut.resample(SAMPLE_RATE))
            except CutLoadError as error:
                skipped[error.reason] += 1
                log.warning("no %s features for cut %s (%s): %s", features.kind, cut.id, error.reason, error)
                out.append(cut)
                continue
            frames = extractor(audio).numpy().astype(np.float16)  # (T, encoder width)
            key = writer.write(array_key(cut.id), frames)
            stored = Features(
                type=feature_type,
                num_frames=frames.shape[0],
                num_features=frames.shape[1],
                frame_shift=frame_shift,
                sampling_rate=SAMPLE_RATE,
                start=cut.start,
                duration=cut.duration,
                storage_type=writer.name,
                storage_path=str(storage_dir.resolve()),
                storage_key=key,
            )
            out.append(dataclasses.replace(cut, features=stored))
    return CutSet.from_cuts(out), skipped


def hubert_stamp(path: str | Path, layer: int) -> dict:
    """Which HuBERT wrote stored states: its folder, layer, and the size and mtime of its weight files (a model
    replaced in the same folder no longer matches)."""
    folder = Path(path).resolve()
    weights = sorted([*folder.glob("model*.safetensors"), *folder.glob("pytorch_model*.bin")])
    return {
        "hubert_path": str(folder),
        "hubert_layer": layer,
        "hubert_weights": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights],
    }


def _stamp(cuts_path: Path, features: FeatureConfig) -> dict:
    stat = cuts_path.stat()
    if features.kind == "hubert":
        encoder = hubert_stamp(features.hubert_path, features.hubert_layer)
    else:
        encoder = {"whisper_path": features.whisper_path, "whisper_compute_type": features.whisper_compute_type}
    return {
        "source": str(cuts_path.resolve()),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        **encoder,
    }


def stamp_path(out_path: str | Path) -> Path:
    """The `.json` stamp written beside a manifest with stored states (`x.jsonl.gz` -> `x.json`)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name.removesuffix(".jsonl.gz") + ".json")


def read_stamp(out_path: str | Path) -> dict | None:
    """The encoder a manifest's stored states were written by (`hubert_path` + `hubert_layer`, or the Whisper
    settings), from its stamp; None when the manifest has no stamp (states not stored by this module)."""
    path = stamp_path(out_path)
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("stamp")


def prepare_encoder_features(
    cuts_path: str | Path, out_path: str | Path, storage_dir: str | Path, features: FeatureConfig
) -> Path:
    """Write `out_path`: the cuts of `cuts_path` with stored encoder states (reused when already up to date)."""
    cuts_path, out_path = Path(cuts_path), Path(out_path)
    if not cuts_path.is_file():
        raise FileNotFoundError(f"cut manifest {cuts_path} does not exist: build the corpus before its features")
    stamp = _stamp(cuts_path, features)
    if out_path.is_file() and read_stamp(out_path) == stamp:
        log.info("%s features of %s are up to date in %s", features.kind, cuts_path, out_path)
        return out_path
    start = time.perf_counter()
    cuts, skipped = store_encoder_features(load_manifest_lazy(cuts_path), storage_dir, features)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cuts.to_file(out_path)
    seconds = time.perf_counter() - start
    stamp_path(out_path).write_text(json.dumps({"stamp": stamp, "seconds": round(seconds, 1), "skipped": dict(skipped)}, indent=2))
    log.info(
        "%s features of %d cuts of %s in %.1f s (skipped: %s)", features.kind, len(cuts), cuts_path, seconds, dict(skipped)
    )
    return out_path


def main(argv: list[str] | None = None) -> Path:
    """Command line: `python -m datamodules.encoder_features --cuts IN --out OUT --features.kind hubert ...`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="datamodules.encoder_features", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--cuts", type=str, required=True, help="Cut manifest whose audio is encoded.")
    parser.add_argument("--out", type=str, required=True, help="Cut manifest written with the stored states.")
    parser.add_argument(
        "--storage_dir", type=str | None, default=None, help="Folder of the .npy states (default: OUT's folder/features)."
    )
    parser.add_class_arguments(FeatureConfig, "features")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    features = FeatureConfig(**args.features.as_dict())
    out = Path(args.out)
    storage_dir = args.storage_dir or out.parent / "features" / out.name.removesuffix(".jsonl.gz")
    return prepare_encoder_features(args.cuts, out, storage_dir, features)


if __name__ == "__main__":
    main()

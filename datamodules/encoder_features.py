"""Store frozen Whisper encoder states with the cuts, so that training reads them instead of encoding.

`store_whisper_features(cuts, storage_dir, features)` encodes every cut's audio once with the
`FeatureConfig`'s Whisper encoder and returns the cuts with a lhotse `Features` manifest attached
(`type = WHISPER_FEATURE_TYPE`, 20 ms frame shift, float16 `.npy` files under `storage_dir`). A cut
whose audio cannot be read keeps no features, is counted per reason (`quality.SKIP_REASONS`) and
is skipped later by the dataset like any unreadable cut.

`prepare_whisper_features(cuts_path, out_path, storage_dir, features)` does it for a manifest file
and is idempotent: a `.json` stamp beside `out_path` records the source manifest's size and mtime
and the encoder, and a stamp that matches means the stored features are reused.
"""

from __future__ import annotations

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

from datamodules.dataset import WHISPER_FEATURE_TYPE, CutLoadError, MostDataset
from lightning_most.audio import SAMPLE_RATE
from lightning_most.audio.features import FeatureConfig, InputFeatures

log = logging.getLogger(__name__)


def store_whisper_features(
    cuts: CutSet, storage_dir: str | Path, features: FeatureConfig, num_threads: int = 0
) -> tuple[CutSet, Counter]:
    """Encode each cut's audio with the Whisper encoder of `features`; return the cuts with `features` and the skips."""
    if features.kind != "whisper":
        raise ValueError(f"store_whisper_features needs FeatureConfig.kind='whisper', got {features.kind!r}")
    extractor = InputFeatures(features, num_threads=num_threads)
    frame_shift = 1.0 / extractor.whisper.frame_rate
    skipped: Counter = Counter()
    out = []
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    total = None if cuts.is_lazy else len(cuts)
    with NumpyFilesWriter(storage_dir) as writer:
        for cut in tqdm(cuts, total=total, desc=f"Whisper features -> {storage_dir}", unit="cut"):
            try:
                audio = MostDataset._load_audio(cut if cut.sampling_rate == SAMPLE_RATE else cut.resample(SAMPLE_RATE))
            except CutLoadError as error:
                skipped[error.reason] += 1
                log.warning("no Whisper features for cut %s (%s): %s", cut.id, error.reason, error)
                out.append(cut)
                continue
            frames = extractor(audio).numpy().astype(np.float16)  # (T, d_model)
            key = writer.write(cut.id, frames)
            cut.features = Features(
                type=WHISPER_FEATURE_TYPE,
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
            out.append(cut)
    return CutSet.from_cuts(out), skipped


def _stamp(cuts_path: Path, features: FeatureConfig) -> dict:
    stat = cuts_path.stat()
    return {
        "source": str(cuts_path.resolve()),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "whisper_path": features.whisper_path,
        "whisper_compute_type": features.whisper_compute_type,
    }


def prepare_whisper_features(
    cuts_path: str | Path, out_path: str | Path, storage_dir: str | Path, features: FeatureConfig
) -> Path:
    """Write `out_path`: the cuts of `cuts_path` with stored Whisper features (reused when already up to date)."""
    cuts_path, out_path = Path(cuts_path), Path(out_path)
    if not cuts_path.is_file():
        raise FileNotFoundError(f"cut manifest {cuts_path} does not exist: build the corpus before its features")
    stamp_path = out_path.with_name(out_path.name.removesuffix(".jsonl.gz") + ".json")
    stamp = _stamp(cuts_path, features)
    if out_path.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        log.info("Whisper features of %s are up to date in %s", cuts_path, out_path)
        return out_path
    start = time.perf_counter()
    cuts, skipped = store_whisper_features(load_manifest_lazy(cuts_path), storage_dir, features)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cuts.to_file(out_path)
    seconds = time.perf_counter() - start
    stamp_path.write_text(json.dumps({"stamp": stamp, "seconds": round(seconds, 1), "skipped": dict(skipped)}, indent=2))
    log.info("Whisper features of %d cuts of %s in %.1f s (skipped: %s)", len(cuts), cuts_path, seconds, dict(skipped))
    return out_path

"""Units for a whole CutSet: fit the k-means on its frames, then store every cut's units with the cut.

Units are written as int32 `.npy` files by lhotse's `NumpyFilesWriter` (lilcom storage is lossy and
for floats) and attached as a `TemporalArray` custom field, so after `cuts.to_file(...)` and
`CutSet.from_file(...)` a data pipeline reads `cut.load_units()` -> (T,) and `cut.truncate(...)`
cuts the units with the audio.

A cut whose audio cannot be read (missing or corrupt file) or that is too short to give one frame is
skipped with a warning naming it, and a summary warning gives the count.

`stored_frames` (optional, both functions) returns the encoder frames already stored with a cut (e.g.
the HuBERT states of `datamodules.encoder_features`, checked by the caller to be the encoder's), or
None; those cuts are not encoded again.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.features.io import NumpyFilesWriter
from torch import Tensor
from tqdm import tqdm

from lightning_most.audio.encoders import WaveformEncoder
from lightning_most.audio.quantizer import UnitQuantizer, train_kmeans
from lightning_most.audio.waveforms import load_cut_waveform

UNITS_FIELD = "units"
StoredFrames = Callable[[Cut], Tensor | None]  # a cut -> its stored encoder frames (T, F), or None: encode its audio


def array_key(cut_id: str) -> str:
    """File name of a cut's array for lhotse's `NumpyFilesWriter`, which makes no sub-folders: '/' (LibriHeavy ids) -> '__'."""
    return cut_id.replace("/", "__")


def _encoded_cuts(
    cuts: CutSet, encoder: WaveformEncoder, skipped: list[str], stored_frames: StoredFrames | None = None
) -> Iterator[tuple[Cut, Tensor]]:
    """Yield (cut, features (T, F)) for every readable cut; append the id of every other cut to `skipped`."""
    for cut in cuts:
        stored = stored_frames(cut) if stored_frames is not None else None
        if stored is not None and stored.shape[0] > 0:
            yield cut, stored
            continue
        try:
            waveform = load_cut_waveform(cut)
        except Exception as e:  # noqa: BLE001 -- lhotse surfaces missing/corrupt audio as many exception types
            warnings.warn(f"skipping cut {cut.id}: cannot read its audio ({type(e).__name__}: {e})", stacklevel=3)
            skipped.append(cut.id)
            continue
        features = encoder(waveform)  # (T, F)
        if features.shape[0] == 0:
            warnings.warn(f"skipping cut {cut.id}: {waveform.numel()} samples give no encoder frame", stacklevel=3)
            skipped.append(cut.id)
            continue
        yield cut, features


def _warn_summary(what: str, skipped: list[str], total: int) -> None:
    if skipped:
        warnings.warn(f"{what}: skipped {len(skipped)} of {total} cuts: {', '.join(skipped)}", stacklevel=3)


def fit_unit_quantizer(
    cuts: CutSet,
    encoder: WaveformEncoder,
    num_units: int = 500,
    seed: int = 0,
    max_frames: int = 200_000,
    iterations: int = 50,
    progress: bool = False,
    stored_frames: StoredFrames | None = None,
) -> UnitQuantizer:
    """Train k-means on the encoder frames of `cuts`, reading cuts in order until `max_frames` frames.

    Args:
        cuts: the audio to learn units from (shuffle it first if its order is biased, e.g. by speaker).
        encoder: gives the frames (T, F) of each cut.
        num_units: K, the unit vocabulary size.
        seed: seeds the k-means++ initialisation.
        max_frames: stop reading cuts once this many frames are collected (the last cut is truncated).
        iterations: maximum Lloyd iterations.
        progress: show progress bars on stderr (frames collected, then k-means).
        stored_frames: a cut's frames stored with it (not encoded again), or None (see the module docstring).
    """
    skipped: list[str] = []
    blocks, collected, seen = [], 0, 0
    with tqdm(total=max_frames, desc="k-means frames", unit="frame", disable=not progress, file=sys.stderr) as bar:
        for cut, features in _encoded_cuts(cuts, encoder, skipped, stored_frames):
            seen += 1
            blocks.append(features[: max_frames - collected])
            collected += blocks[-1].shape[0]
            bar.update(blocks[-1].shape[0])
            if collected >= max_frames:
                break
    _warn_summary("fit_unit_quantizer", skipped, seen + len(skipped))
    if not blocks:
        raise ValueError(f"fit_unit_quantizer: none of the cuts gave features ({len(skipped)} skipped)")
    return train_kmeans(blocks, num_units=num_units, seed=seed, iterations=iterations, progress=progress)


def attach_units(
    cuts: CutSet,
    encoder: WaveformEncoder,
    quantizer: UnitQuantizer,
    storage_dir: str | Path,
    progress: bool = False,
    stored_frames: StoredFrames | None = None,
) -> CutSet:
    """Quantize every cut and attach its units (T,) as the custom field `units`, stored under `storage_dir`.

    Returns the cuts that got units; skipped cuts are warned about (by id) and left out. `progress` shows a
    progress bar (cuts) on stderr; `stored_frames` gives frames stored with a cut (see the module docstring).
    """
    skipped: list[str] = []
    out: list[Cut] = []
    Path(storage_dir).mkdir(parents=True, exist_ok=True)
    with NumpyFilesWriter(storage_dir) as writer:
        encoded = _encoded_cuts(cuts, encoder, skipped, stored_frames)
        for cut, features in tqdm(encoded, desc=f"units -> {storage_dir}", unit="cut", disable=not progress, file=sys.stderr):
            units = quantizer.quantize(features).numpy().astype(np.int32)  # (T,)
            manifest = writer.store_array(
                array_key(cut.id), units, frame_shift=1.0 / encoder.frame_rate, temporal_dim=0, start=cut.start
            )
            out.append(cut.with_custom(UNITS_FIELD, manifest))
    _warn_summary("attach_units", skipped, len(out) + len(skipped))
    return CutSet.from_cuts(out)

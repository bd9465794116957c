"""Discrete units of a corpus (the TTS targets): fit the quantizer on train, attach units to every split.

Uses the audio package's API (`lightning_most.audio`): `fit_unit_quantizer` on the encoder frames of
the (shuffled) train cuts, then `attach_units`, which stores each cut's units as `.npy` files under
`units/` and adds the custom tensor field `units` (read back with `cut.load_units()` -> (T,)). The
encoder settings are written beside the quantizer (`unit_quantizer.json`) so a vocoder or a second
corpus can use the same feature space.

With `units.hubert` set, the frames clustered are the states of one layer of a frozen HuBERT instead
of the log-mel: MoST's paper-scale units, 500 k-means units of HuBERT layer 11 (as SpiritLM), are

    python -m datamodules.units --train TRAIN --splits '{dev: DEV}' --out_dir OUT \
        --units.num_units 500 --units.hubert.path checkpoints/hubert-large-ll60k --units.hubert.layer 11

Such units have no log-mel centroids to invert: they are spoken by a unit HiFi-GAN
(`lightning_most.audio.train_vocoder`).

A split whose manifest was written by `datamodules.encoder_features` with the same HuBERT (its stamp
names the same folder, layer and weight files) is not encoded again: the states stored with its cuts
are clustered (`StoredHubertStates`), and a cut without them is encoded. The states are stored as
float16, so the states encoded here are rounded to float16 too (`lightning_most.audio.Float16HubertStates`):
a cut gets the same units whether its states were stored or not.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, load_manifest_lazy
from lhotse.cut import Cut
from lhotse.utils import compute_num_samples
from torch import Tensor

from datamodules.dataset import HUBERT_FEATURE_TYPE
from datamodules.encoder_features import hubert_stamp, read_stamp
from lightning_most.audio import (
    FbankEncoder,
    FbankEncoderConfig,
    Float16HubertStates,
    HubertEncoder,
    HubertEncoderConfig,
    attach_units,
    fit_unit_quantizer,
)
from lightning_most.audio.constants import SAMPLE_RATE

QUANTIZER_FILE = "unit_quantizer.safetensors"


@dataclass
class UnitsConfig:
    """How the units are learnt: vocabulary size, frames read, the log-mel encoder."""

    num_units: int = 200
    """K, the unit vocabulary. The paper uses 500; on the default 1.5 h corpus (2 shared cores) 500 units took
    100-180 s to fit against 9-11 s for 200 (dev distortion 267 vs 325), which breaks the corpus's 5-minute
    budget, and fewer units are an easier target for the tiny model. Set 500 for paper-sized runs."""
    max_frames: int = 100_000
    """Encoder frames of the train split given to k-means (50 Hz: 100k frames = 33 minutes)."""
    iterations: int = 20
    """Maximum Lloyd iterations."""
    encoder: FbankEncoderConfig = field(default_factory=FbankEncoderConfig)
    """Log-mel settings of the frames that are clustered (default 80 mels, 2 stacked = 50 Hz)."""
    hubert: HubertEncoderConfig | None = None
    """Cluster this frozen HuBERT layer's states instead of the log-mel (paper scale: layer 11, num_units 500)."""

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = FbankEncoderConfig(**self.encoder)
        if isinstance(self.hubert, dict):
            self.hubert = HubertEncoderConfig(**self.hubert)

    def build_encoder(self) -> FbankEncoder | Float16HubertStates:
        """The encoder whose frames are clustered: the HuBERT layer (float16-rounded) when `hubert` is set, else the log-mel."""
        return Float16HubertStates(HubertEncoder(self.hubert)) if self.hubert is not None else FbankEncoder(self.encoder)

    def describe(self) -> dict:
        """The encoder part of `unit_quantizer.json`: which frames the centroids live among."""
        if self.hubert is not None:
            return {"encoder": "hubert", "encoder_config": {**asdict(self.hubert), "path": str(Path(self.hubert.path).resolve())}}
        return {"encoder": "fbank", "encoder_config": asdict(self.encoder)}


class StoredHubertStates:
    """A cut's HuBERT states stored with it by `datamodules.encoder_features`, when of the encoder's layer and width.

    Use it only on cuts whose manifest's stamp names the encoder's HuBERT (`stored_states_match`); the
    counts say how many cuts were read and how many had no such states (and were encoded).
    """

    def __init__(self, encoder: Float16HubertStates) -> None:
        self.encoder = encoder
        self.feature_type = HUBERT_FEATURE_TYPE.format(layer=encoder.config.layer)
        self.read, self.missing = 0, 0

    def __call__(self, cut: Cut) -> Tensor | None:
        """The stored states (T, hidden_size) cut to the encoder's frame count, or None (the cut is encoded)."""
        stored = cut.features if cut.has_features else None
        if stored is None or stored.type != self.feature_type or stored.num_features != self.encoder.feature_dim:
            self.missing += 1
            return None
        # lhotse pads a stored array to round(duration / frame_shift) frames; keep the encoder's own count
        frames = cut.load_features()[: self.encoder.num_frames(compute_num_samples(cut.duration, SAMPLE_RATE))]
        self.read += 1
        return torch.from_numpy(np.asarray(frames, dtype=np.float32))


def stored_states_match(manifest: str | Path, hubert: HubertEncoderConfig) -> tuple[bool, str]:
    """Whether the states stored with `manifest`'s cuts are those of `hubert` (its stamp names the same HuBERT folder,
    layer and weight files), and why, for the progress line."""
    stamp = read_stamp(manifest) if "://" not in str(manifest) else None
    if stamp is None:
        return False, "no HuBERT states stored with its cuts (no datamodules.encoder_features stamp beside it)"
    wanted = hubert_stamp(hubert.path, hubert.layer)
    found = {key: stamp.get(key) for key in wanted}
    if found["hubert_path"] is None:
        return False, "its stored states are not HuBERT states"
    if found != wanted:
        return False, (
            f"its stored states are layer {found['hubert_layer']} of {found['hubert_path']}, not layer "
            f"{wanted['hubert_layer']} of {wanted['hubert_path']} (or that folder's weights changed since)"
        )
    return True, f"its stamp names layer {hubert.layer} of {wanted['hubert_path']}, with the same weight files"


def _progress(line: str) -> None:
    """A progress line on stderr (shown whether or not logging is configured, as during `fit`)."""
    print(line, file=sys.stderr, flush=True)


def fit_and_attach_units(
    cuts: dict[str, CutSet],
    outputs: dict[str, Path],
    out_dir: Path,
    config: UnitsConfig,
    seed: int,
    stored_splits: frozenset[str] = frozenset(),
) -> dict:
    """Fit the quantizer on `cuts["train"]`, save it in `out_dir`, attach units to every split, write `outputs`.

    Writes `out_dir/unit_quantizer.safetensors` + `.json` (encoder settings, K, frame rate) and the unit
    arrays under `out_dir/units/{split}/`; returns timings (and, with `stored_splits`, the cuts whose stored
    HuBERT states were read) for the corpus summary. `stored_splits`: splits whose cuts' stored states are
    `config.hubert`'s (`stored_states_match`), clustered instead of encoding the audio.
    """
    if "train" not in cuts:
        raise ValueError(f"fit_and_attach_units needs a 'train' split to fit the units on, got {sorted(cuts)}.")
    if stored_splits and config.hubert is None:
        raise ValueError("fit_and_attach_units: stored_splits reuses stored HuBERT states; set config.hubert")
    start = time.perf_counter()
    encoder = config.build_encoder()
    fit_reader = StoredHubertStates(encoder) if "train" in stored_splits else None
    readers = {split: StoredHubertStates(encoder) for split in stored_splits}  # the attach pass's, counted per split
    _progress(f"units: fitting {config.num_units} k-means centroids on at most {config.max_frames} train frames "
              f"({config.iterations} iterations)")
    quantizer = fit_unit_quantizer(
        cuts["train"].shuffle(rng=random.Random(seed), buffer_size=10_000),
        encoder,
        num_units=config.num_units,
        seed=seed,
        max_frames=config.max_frames,
        iterations=config.iterations,
        progress=True,
        stored_frames=fit_reader,
    )
    quantizer_path = out_dir / QUANTIZER_FILE
    quantizer.save(quantizer_path)
    fit_seconds = time.perf_counter() - start
    description = {
        **config.describe(),
        "num_units": config.num_units,
        "frame_rate": encoder.frame_rate,
    }
    quantizer_path.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    _progress(f"units: fitted in {fit_seconds:.0f} s")
    for split, split_cuts in cuts.items():
        _progress(f"units: quantizing the {split} split")
        reader = readers.get(split)
        attach_units(split_cuts, encoder, quantizer, out_dir / "units" / split, progress=True, stored_frames=reader
                     ).to_file(outputs[split])  # fmt: skip
        if reader is not None:
            _progress(f"units: the {split} split read the stored states of {reader.read} cuts and encoded "
                      f"{reader.missing} without them")  # fmt: skip
    _progress(f"units: done in {time.perf_counter() - start:.0f} s")
    summary = {
        "num_units": config.num_units,
        "frame_rate": encoder.frame_rate,
        "fit_seconds": round(fit_seconds, 1),
        "attach_seconds": round(time.perf_counter() - start - fit_seconds, 1),
    }
    if readers:
        summary["stored_states_read"] = {split: reader.read for split, reader in readers.items()}
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Command line for real corpora: `python -m datamodules.units --train T --splits '{dev: D}' --out_dir O`.

    Reads the recipe manifests (`datamodules.recipes`), writes the same file names under `out_dir` with
    the `units` field attached, plus the quantizer.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="datamodules.units", description=main.__doc__)
    parser.add_argument("--train", type=str, required=True, help="Train cut manifest (units are fit on it).")
    parser.add_argument("--splits", type=dict[str, str], default={}, help="Other splits: name -> cut manifest.")
    parser.add_argument("--out_dir", type=str, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_class_arguments(UnitsConfig, "units")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests = {"train": args.train, **args.splits}
    missing = [p for p in manifests.values() if "://" not in p and not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such cut manifest(s): {missing}; run datamodules.recipes first.")
    cuts = {split: load_manifest_lazy(path) for split, path in manifests.items()}
    outputs = {split: out_dir / Path(path).name for split, path in manifests.items()}
    config = UnitsConfig(**args.units.as_dict())
    stored_splits = set()
    if config.hubert is not None:
        for split, path in manifests.items():
            match, why = stored_states_match(path, config.hubert)
            _progress(f"units: the {split} split ({path}) {'reads its stored states' if match else 'is encoded'}: {why}")
            if match:
                stored_splits.add(split)
    return fit_and_attach_units(cuts, outputs, out_dir, config, args.seed, frozenset(stored_splits))


if __name__ == "__main__":
    main()

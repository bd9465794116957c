"""Discrete units of a corpus (the TTS targets): fit the quantizer on train, attach units to every split.

Uses the audio package's API (`lightning_most.audio`): `fit_unit_quantizer` on the encoder frames of
the (shuffled) train cuts, then `attach_units`, which stores each cut's units as `.npy` files under
`units/` and adds the custom tensor field `units` (read back with `cut.load_units()` -> (T,)). The
encoder settings are written beside the quantizer (`unit_quantizer.json`) so a vocoder or a second
corpus can use the same feature space.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from lhotse import CutSet

from lightning_most.audio import FbankEncoder, FbankEncoderConfig, attach_units, fit_unit_quantizer

if TYPE_CHECKING:
    from datamodules.embedded import EmbeddedCorpus


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

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = FbankEncoderConfig(**self.encoder)


def attach_corpus_units(cuts: dict[str, CutSet], paths: EmbeddedCorpus, config: UnitsConfig, seed: int) -> dict:
    """Fit the quantizer on `cuts["train"]`, save it, attach units to each split and write its cut manifest."""
    start = time.perf_counter()
    encoder = FbankEncoder(config.encoder)
    quantizer = fit_unit_quantizer(
        cuts["train"].to_eager().shuffle(rng=random.Random(seed)),
        encoder,
        num_units=config.num_units,
        seed=seed,
        max_frames=config.max_frames,
        iterations=config.iterations,
    )
    quantizer.save(paths.unit_quantizer)
    fit_seconds = time.perf_counter() - start
    description = {
        "encoder": "fbank",
        "encoder_config": asdict(config.encoder),
        "num_units": config.num_units,
        "frame_rate": encoder.frame_rate,
    }
    paths.unit_quantizer.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    for split, split_cuts in cuts.items():
        attach_units(split_cuts, encoder, quantizer, paths.root / "units" / split).to_file(paths.cuts[split])
    return {
        "num_units": config.num_units,
        "frame_rate": encoder.frame_rate,
        "fit_seconds": round(fit_seconds, 1),
        "attach_seconds": round(time.perf_counter() - start - fit_seconds, 1),
    }

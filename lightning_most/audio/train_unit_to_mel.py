"""Train a `UnitToMel` network on (units, log-mel, speaker) triples of a CutSet: L1 on the log-mel.

`unit_to_mel_examples(cuts, fbank)` reads each cut's units (`cut.load_units()`, (T,)) and the `FbankEncoder`
log-mel of its audio ((T', n_mels * stack), the same 50 Hz grid for the default 2 x 10 ms), trims both to
the shorter, and keeps the supervision's speaker. `train_unit_to_mel` draws random crops of
`crop_units` units from random examples (a padded tail is masked out of the loss) and runs AdamW with a
one-cycle schedule. A plain loop rather than a Lightning run: a few hundred steps of a 1.7M-parameter
network on tensors already in memory, with no validation, checkpoints or loggers to manage.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from torch import Tensor

from lightning_most.audio.encoders import FbankEncoder, FbankEncoderConfig
from lightning_most.audio.unit_to_mel import UnitToMel, UnitToMelConfig
from lightning_most.audio.units import UNITS_FIELD
from lightning_most.audio.waveforms import load_cut_waveform

log = logging.getLogger(__name__)


@dataclass
class UnitToMelExample:
    """One utterance: its units (T,) long, its log-mel (T, n_mels * stack) float, its speaker."""

    units: Tensor
    log_mel: Tensor
    speaker: str


@dataclass
class UnitToMelTrainingConfig:
    """How long and on what crops the unit-to-mel network trains."""

    steps: int = 2000
    """Optimizer steps (2000 x 16 x 128 units = 4.1M unit frames, ~15 passes over the 1.5 h default corpus). On the
    standardized K=500 Whisper units the resynthesis judge WER is 49% after 600 steps, 25% after 2000 and 25% after
    4000 (bench/RESULTS.md): 2000 is where this network stops gaining."""
    batch_size: int = 16
    crop_units: int = 128
    """Units per training crop (2.56 s at 50 Hz); shorter utterances are padded and masked."""
    learning_rate: float = 2e-3
    """Peak of the one-cycle schedule."""
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 100
    """Log the training loss every this many steps."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop_units", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"UnitToMelTrainingConfig.{name} must be >= 1, got {getattr(self, name)}")


def read_examples(
    cuts: Iterable[Cut], fbank: FbankEncoderConfig, read_inputs: Callable[[Cut], Tensor], what: str
) -> tuple[list[tuple[Tensor, Tensor, str]], list[str]]:
    """(inputs (T, ...), log-mel (T, n_mels * stack), speaker) of every cut, both trimmed to the shorter; returns
    them and the ids of the cuts skipped (warned, with `what` naming the caller)."""
    encoder = FbankEncoder(fbank)
    examples, skipped = [], []
    for cut in cuts:
        try:
            inputs = read_inputs(cut)  # (T, ...)
            log_mel = encoder(load_cut_waveform(cut))  # (T', n_mels * stack)
        except Exception as e:  # noqa: BLE001 -- lhotse surfaces missing/corrupt audio, units or features as many types
            warnings.warn(f"{what}: skipping cut {cut.id} ({type(e).__name__}: {e})", stacklevel=3)
            skipped.append(cut.id)
            continue
        T = min(inputs.shape[0], log_mel.shape[0])
        if T == 0:
            warnings.warn(f"{what}: skipping cut {cut.id} (no input frame or no log-mel frame)", stacklevel=3)
            skipped.append(cut.id)
            continue
        speaker = cut.supervisions[0].speaker if cut.supervisions and cut.supervisions[0].speaker else "speaker"
        examples.append((inputs[:T], log_mel[:T], speaker))
    if skipped:
        warnings.warn(f"{what}: skipped {len(skipped)} of {len(skipped) + len(examples)} cuts", stacklevel=3)
    return examples, skipped


def unit_to_mel_examples(cuts: CutSet, fbank: FbankEncoderConfig) -> tuple[list[UnitToMelExample], list[str]]:
    """The (units, log-mel, speaker) of every cut; returns the examples and the ids of the cuts skipped (warned)."""

    def read_units(cut: Cut) -> Tensor:
        return torch.from_numpy(np.asarray(cut.load_custom(UNITS_FIELD), dtype=np.int64))  # (T,)

    examples, skipped = read_examples(cuts, fbank, read_units, "unit-to-mel")
    return [UnitToMelExample(*example) for example in examples], skipped


def _pad_frames(frames: Tensor, length: int) -> Tensor:
    """Zero-pad the first (time) dimension of frames (T, ...) to `length`."""
    return torch.nn.functional.pad(frames, (0, 0) * (frames.dim() - 1) + (0, length - frames.shape[0]))


def crop_batch(
    examples: Sequence, inputs: str, speakers: dict[str, int], config: UnitToMelTrainingConfig, rng: random.Random
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random crops of `config.crop_units` frames: the examples' `inputs` field (B, C, ...), speaker ids (B,), log-mel
    (B, C, F) and mask (B, C) bool (a short example is zero-padded and its padding masked)."""
    C = config.crop_units
    crops, speaker_ids, log_mels, masks = [], [], [], []
    for _ in range(config.batch_size):
        example = examples[rng.randrange(len(examples))]
        frames = getattr(example, inputs)
        T = frames.shape[0]
        start = rng.randrange(max(T - C, 0) + 1)
        n = min(C, T - start)
        crops.append(_pad_frames(frames[start : start + n], C))
        log_mels.append(_pad_frames(example.log_mel[start : start + n], C))
        masks.append(torch.arange(C) < n)
        speaker_ids.append(speakers[example.speaker])
    return torch.stack(crops), torch.tensor(speaker_ids), torch.stack(log_mels), torch.stack(masks)


def masked_l1(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |predicted - target| over the unmasked frames: (B, T, F), (B, T, F), (B, T) bool -> ()."""
    return (predicted - target).abs()[mask].mean()


def speaker_index(examples: Sequence, model_config: UnitToMelConfig) -> dict[str, int]:
    """Speaker name -> embedding row of `model_config`; every example's speaker must be among them."""
    speakers = {name: i for i, name in enumerate(model_config.speakers)}
    unknown = sorted({e.speaker for e in examples} - speakers.keys())
    if unknown:
        raise ValueError(f"examples speak as {unknown}, which UnitToMelConfig.speakers does not list")
    return speakers


def one_cycle_adamw(
    parameters: Iterable[torch.nn.Parameter], config: UnitToMelTrainingConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW with the one-cycle schedule of `config` (peak `learning_rate`, 5% warm-up, `steps` long)."""
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.05
    )
    return optimizer, schedule


def train_unit_to_mel(
    examples: list[UnitToMelExample], model_config: UnitToMelConfig, config: UnitToMelTrainingConfig
) -> tuple[UnitToMel, list[float]]:
    """Train a `UnitToMel` (its speakers must cover the examples'); return it in eval mode and the loss per step."""
    if not examples:
        raise ValueError("train_unit_to_mel got no examples (every cut was skipped?)")
    speakers = speaker_index(examples, model_config)
    for e in examples:
        if e.log_mel.shape[1] != model_config.frame_dim:
            raise ValueError(f"log-mel frames of width {e.log_mel.shape[1]}, but the model predicts {model_config.frame_dim}")
        if int(e.units.max()) >= model_config.num_units:
            raise ValueError(f"unit {int(e.units.max())} out of range for num_units={model_config.num_units}")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = UnitToMel(model_config).train()
    optimizer, schedule = one_cycle_adamw(model.parameters(), config)
    losses, start = [], time.perf_counter()
    for step in range(config.steps):
        units, speaker_ids, target, mask = crop_batch(examples, "units", speakers, config, rng)
        loss = masked_l1(model(units, speaker_ids), target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % config.log_every == 0 or step == config.steps - 1:
            log.info("unit-to-mel step %d/%d: L1 %.3f (%.0f s)", step + 1, config.steps, losses[-1], time.perf_counter() - start)
    return model.eval().requires_grad_(False), losses

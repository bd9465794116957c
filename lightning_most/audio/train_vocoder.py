"""Train a unit HiFi-GAN (speechbrain `UnitHifiganGenerator`) on the (units, waveform) pairs of a CutSet.

The cuts must carry units (`attach_units`). Each step crops `segment_units` units and the matching
`segment_units * 320` samples from random cuts. Losses: speechbrain's HiFi-GAN mel L1 (x45), a
multi-resolution STFT loss, and, with `adversarial`, speechbrain's multi-period/multi-scale
discriminators with least-squares GAN loss and feature matching (x10). The STFT loss is ours:
speechbrain 1.1.2's `MultiScaleSTFTLoss` calls `torch.stft` without `return_complex`, which torch 2.11
rejects. The result is a folder `UnitHifiganVocoder` reads.

Crops are cut in `num_workers` DataLoader processes (on a GPU the audio loading, and LJSpeech's
22.05 -> 16 kHz resampling, would otherwise starve it). Every `save_every` steps the generator folder
and `training_state.pt` (step, both networks, both optimizers) are written; the same command resumes
from that state. The GPU recipe for an LJSpeech layout is `conf/vocoder/ljspeech_unit_hifigan.yaml`:

    python -m lightning_most.audio.train_vocoder --cuts data/cuts_with_units.jsonl.gz --output-dir exp/vocoder
    python -m lightning_most.audio.train_vocoder --config conf/vocoder/ljspeech_unit_hifigan.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from lhotse import CutSet
from lhotse.cut import Cut
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.units import UNITS_FIELD
from lightning_most.audio.vocoder import UnitHifiganConfig, save_unit_hifigan
from lightning_most.audio.waveforms import load_cut_waveform
from lightning_most.safe_loading import load_checkpoint

log = logging.getLogger(__name__)
TRAINING_STATE_FILE = "training_state.pt"  # step, networks and optimizers, for resuming
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop); window = n_fft


def multi_resolution_stft_loss(fake: Tensor, real: Tensor) -> Tensor:
    """Spectral convergence + log-magnitude L1, averaged over `STFT_RESOLUTIONS`; waveforms (B, 1, S)."""
    total = fake.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=fake.device)
        spec = [
            torch.stft(x[:, 0], n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-7)
            for x in (fake, real)
        ]  # 2 x (B, n_fft // 2 + 1, frames)
        convergence = torch.linalg.norm(spec[1] - spec[0]) / torch.linalg.norm(spec[1])
        total = total + convergence + (spec[1].log() - spec[0].log()).abs().mean()
    return total / len(STFT_RESOLUTIONS)


@dataclass
class VocoderTrainingConfig:
    """What `train_vocoder` trains on, for how long, and where it writes the generator."""

    cuts: str
    """CutSet manifest whose cuts carry units (see attach_units)."""
    output_dir: str
    """Folder for config.json + generator.ckpt."""
    generator: UnitHifiganConfig = field(default_factory=UnitHifiganConfig)
    steps: int = 100_000
    batch_size: int = 16
    segment_units: int = 32
    """Units per training crop (32 = 0.64 s at 50 Hz); cuts shorter than this are not used."""
    learning_rate: float = 2e-4
    adversarial: bool = True
    """Add HiFi-GAN's discriminators; without them only the spectral losses train the generator (blurrier)."""
    save_every: int = 10_000
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    """Processes cutting crops (0: in the training process); 4-8 keep a GPU fed."""
    resume: bool = True
    """Continue from `output_dir/training_state.pt` when it exists."""


class _Crops:
    """Random (units, waveform) crops from the usable cuts; a cut that fails to load is warned about and dropped."""

    def __init__(self, cuts: CutSet, segment_units: int, samples_per_unit: int, frame_rate: float, seed: int) -> None:
        self.segment_units, self.samples_per_unit = segment_units, samples_per_unit
        self.rng = random.Random(seed)
        self.cuts: list[Cut] = []
        for cut in cuts:
            if not cut.has_custom(UNITS_FIELD):
                raise ValueError(f"cut {cut.id} has no '{UNITS_FIELD}': run attach_units on the CutSet first")
            if cut.duration * frame_rate >= segment_units:
                self.cuts.append(cut)
        if not self.cuts:
            raise ValueError(f"no cut holds {segment_units} units; lower segment_units")
        self.dropped: list[str] = []

    def _crop(self, cut: Cut) -> tuple[Tensor, Tensor]:
        units = torch.from_numpy(cut.load_custom(UNITS_FIELD)).long()  # (T,)
        waveform = load_cut_waveform(cut)  # (S,)
        start = self.rng.randrange(units.numel() - self.segment_units + 1)
        units = units[start : start + self.segment_units]
        n = self.segment_units * self.samples_per_unit
        samples = waveform[start * self.samples_per_unit :][:n]
        return units, torch.nn.functional.pad(samples, (0, n - samples.numel()))  # (segment_units,), (n,)

    def batch(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Units (B, segment_units) long and waveforms (B, 1, segment_units * samples_per_unit)."""
        units, waves = [], []
        while len(units) < batch_size:
            if not self.cuts:
                raise RuntimeError(f"every cut failed to load: {', '.join(self.dropped)}")
            cut = self.rng.choice(self.cuts)
            try:
                u, w = self._crop(cut)
            except Exception as e:  # noqa: BLE001 -- missing/corrupt audio or units: drop the cut, keep training
                warnings.warn(f"dropping cut {cut.id} from vocoder training: {type(e).__name__}: {e}", stacklevel=2)
                self.cuts.remove(cut)
                self.dropped.append(cut.id)
                continue
            units.append(u)
            waves.append(w)
        return torch.stack(units), torch.stack(waves)[:, None]


class _CropBatches(torch.utils.data.IterableDataset):
    """An endless stream of `_Crops.batch` batches; each DataLoader worker draws with its own seed."""

    def __init__(self, crops: _Crops, batch_size: int, seed: int) -> None:
        self.crops, self.batch_size, self.seed = crops, batch_size, seed

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            self.crops.rng = random.Random(self.seed + 1 + worker.id)
        while True:
            yield self.crops.batch(self.batch_size)


def train_vocoder(config: VocoderTrainingConfig) -> Path:
    """Train the generator and write it to `config.output_dir`; returns that folder."""
    import speechbrain as sb
    from speechbrain.lobes.models import HifiGAN

    torch.manual_seed(config.seed)
    gen_config = config.generator
    crops = _Crops(
        CutSet.from_file(config.cuts),
        config.segment_units,
        gen_config.samples_per_unit,
        frame_rate=SAMPLE_RATE / gen_config.samples_per_unit,
        seed=config.seed,
    )
    device = torch.device(config.device)
    generator = gen_config.build().to(device)
    generator_loss = HifiGAN.GeneratorLoss(
        l1_spec_loss=HifiGAN.L1SpecLoss(
            sample_rate=SAMPLE_RATE, hop_length=256, win_length=1024, n_fft=1024, n_stft=513, n_mel_channels=80
        ),
        l1_spec_loss_weight=45.0,
        mseg_loss=HifiGAN.MSEGLoss() if config.adversarial else None,
        mseg_loss_weight=1.0,
        feat_match_loss=HifiGAN.MelganFeatureLoss() if config.adversarial else None,
        feat_match_loss_weight=10.0,
    ).to(device)
    optimizer_g = torch.optim.AdamW(generator.parameters(), config.learning_rate, betas=(0.8, 0.99))
    if config.adversarial:
        discriminator = HifiGAN.HifiganDiscriminator().to(device)
        discriminator_loss = HifiGAN.DiscriminatorLoss(msed_loss=HifiGAN.MSEDLoss())
        optimizer_d = torch.optim.AdamW(discriminator.parameters(), config.learning_rate, betas=(0.8, 0.99))
    output_dir = Path(config.output_dir)
    networks = {"generator": generator, "optimizer_g": optimizer_g}
    if config.adversarial:
        networks |= {"discriminator": discriminator, "optimizer_d": optimizer_d}
    first_step = 1
    state_path = output_dir / TRAINING_STATE_FILE
    if config.resume and state_path.is_file():
        state = load_checkpoint(state_path, map_location=device)
        missing = sorted(set(networks) - set(state))
        if missing:
            raise ValueError(f"{state_path} has no {missing}: it was saved with another `adversarial` setting.")
        for name, module in networks.items():
            module.load_state_dict(state[name])
        first_step = state["step"] + 1
        log.info("resuming vocoder training from %s at step %d", state_path, first_step)
    batches = iter(torch.utils.data.DataLoader(
        _CropBatches(crops, config.batch_size, config.seed), batch_size=None, num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    ))  # fmt: skip
    for step in range(first_step, config.steps + 1):
        units, real = next(batches)  # (B, U), (B, 1, U * samples_per_unit)
        units, real = units.to(device, non_blocking=True), real.to(device, non_blocking=True)
        fake, _ = generator(units[..., None])  # (B, 1, U * samples_per_unit)
        losses = {}
        if config.adversarial:
            scores_fake, _ = discriminator(fake.detach())
            scores_real, _ = discriminator(real)
            d_loss = discriminator_loss(scores_fake, scores_real)["D_loss"]
            optimizer_d.zero_grad()
            d_loss.backward()
            optimizer_d.step()
            scores_fake, feats_fake = discriminator(fake)
            _, feats_real = discriminator(real)
            losses = {"scores_fake": scores_fake, "feats_fake": feats_fake, "feats_real": feats_real}
        g_loss = generator_loss(sb.Stage.TRAIN, fake, real, **losses)["G_loss"] + multi_resolution_stft_loss(fake, real)
        optimizer_g.zero_grad()
        g_loss.backward()
        optimizer_g.step()
        log.info("step %d: generator loss %.4f", step, g_loss.item())
        if step % config.save_every == 0 or step == config.steps:
            save_unit_hifigan(generator, gen_config, output_dir)
            state = {"step": step, **{name: module.state_dict() for name, module in networks.items()}}
            torch.save(state, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)  # atomic: a kill mid-save keeps the previous state
    if crops.dropped:  # with num_workers > 0 each worker warns about the cuts it dropped, as it drops them
        warnings.warn(f"vocoder training dropped {len(crops.dropped)} cuts: {', '.join(crops.dropped)}", stacklevel=2)
    return output_dir


OPTIONS = ("steps", "batch_size", "segment_units", "learning_rate", "save_every", "seed", "device", "num_workers")


def _read_config_file(path: str) -> dict:
    values = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(VocoderTrainingConfig)}
    if not isinstance(values, dict) or set(values) - known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else type(values).__name__
        raise ValueError(f"{path}: {unknown} are not VocoderTrainingConfig fields; its fields are {sorted(known)}.")
    return values


def main(argv: list[str] | None = None) -> Path:
    """Command line: `python -m lightning_most.audio.train_vocoder [--config YAML] --cuts ... --output-dir ...`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML of VocoderTrainingConfig fields (generator: its fields); flags override")
    parser.add_argument("--cuts", help="CutSet manifest with units attached")
    parser.add_argument("--output-dir")
    parser.add_argument(
        "--generator-config", help="JSON of UnitHifiganConfig fields (default: the 16 kHz 500-unit one)"
    )
    defaults = VocoderTrainingConfig(cuts="", output_dir="")
    for name in OPTIONS:
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), help=f"default: {value}")
    parser.add_argument("--no-adversarial", action="store_true", help="spectral losses only, no discriminators")
    args = parser.parse_args(argv)
    values = _read_config_file(args.config) if args.config else {}
    for name in ("cuts", "output_dir", *OPTIONS):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.no_adversarial:
        values["adversarial"] = False
    if args.generator_config:
        values["generator"] = json.loads(Path(args.generator_config).read_text())
    values["generator"] = UnitHifiganConfig(**values.get("generator", {}))
    missing = [f"--{name.replace('_', '-')}" for name in ("cuts", "output_dir") if not values.get(name)]
    if missing:
        parser.error(f"{' and '.join(missing)} required (on the command line or in --config)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return train_vocoder(VocoderTrainingConfig(**values))


if __name__ == "__main__":
    main()

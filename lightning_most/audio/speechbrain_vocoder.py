"""A speechbrain unit HiFi-GAN folder (`hyperparams.yaml` + `generator.ckpt`), read without running its YAML.

speechbrain publishes unit vocoders (e.g. `speechbrain/tts-hifigan-unit-hubert-l6-k100-ljspeech`,
`speechbrain/hifigan-hubert-k1000-LibriTTS`) as a HyperPyYAML file whose `generator` is
`!new:speechbrain.lobes.models.HifiGAN.UnitHifiganGenerator` with `!ref <name>` arguments, and a
state dict. HyperPyYAML would construct whatever the file names; here the file is parsed as data
(every `!tag` kept as a record), only that one class is accepted, its arguments are resolved from the
file's top-level values, and the weights are read with `weights_only=True`.

speechbrain's `UnitHIFIGAN` interface shifts unit ids by one before the generator (id 0 is reserved),
so `unit_offset` is 1 for its published folders. A generator with a duration predictor expects
deduplicated units and predicts each one's duration; multi-speaker generators need a speaker
embedding and are refused.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.vocoder import MIN_HIFIGAN_UNITS
from lightning_most.safe_loading import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint

HPARAMS_FILE, WEIGHTS_FILE = "hyperparams.yaml", "generator.ckpt"
GENERATOR_TAG = "!new:speechbrain.lobes.models.HifiGAN.UnitHifiganGenerator"


@dataclass(frozen=True)
class _Tagged:
    """A HyperPyYAML `!tag value` kept as data."""

    tag: str
    value: object


class _DataLoader(yaml.SafeLoader):
    """SafeLoader that keeps every `!tag` node as a `_Tagged` record instead of constructing anything."""


def _tagged(loader: _DataLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return _Tagged("!" + suffix, value)


_DataLoader.add_multi_constructor("!", _tagged)


def read_generator_arguments(hparams_file: Path) -> dict:
    """The `UnitHifiganGenerator` keyword arguments of a speechbrain `hyperparams.yaml`, `!ref <key>` resolved."""
    values = yaml.load(hparams_file.read_text(), Loader=_DataLoader)  # _DataLoader is a SafeLoader: constructs no objects
    generator = values.get("generator") if isinstance(values, dict) else None
    if not isinstance(generator, _Tagged) or generator.tag != GENERATOR_TAG or not isinstance(generator.value, dict):
        found = generator.tag if isinstance(generator, _Tagged) else type(generator).__name__
        raise ValueError(f"{hparams_file}: `generator` must be `{GENERATOR_TAG}` with named arguments, found {found}.")

    def resolve(value: object, name: str) -> object:
        if isinstance(value, _Tagged):
            reference = str(value.value).strip()
            if value.tag != "!ref" or not (reference.startswith("<") and reference.endswith(">")):
                raise ValueError(f"{hparams_file}: generator argument {name} is `{value.tag} {value.value}`; "
                                 "only plain values and `!ref <key>` are read.")
            key = reference[1:-1]
            if key not in values:
                raise ValueError(f"{hparams_file}: generator argument {name} refers to <{key}>, which the file lacks.")
            return resolve(values[key], key)
        return value

    accepted = set(inspect.signature(_generator_class()).parameters)
    arguments = {name: resolve(value, name) for name, value in generator.value.items()}
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise ValueError(f"{hparams_file}: UnitHifiganGenerator has no argument(s) {unknown}.")
    return arguments


def _generator_class():
    from speechbrain.lobes.models.HifiGAN import UnitHifiganGenerator

    return UnitHifiganGenerator


@dataclass
class SpeechBrainUnitHifiganConfig:
    """Where a speechbrain unit HiFi-GAN folder lives and how its unit ids are numbered."""

    path: str
    """Folder with hyperparams.yaml and generator.ckpt (as published by speechbrain)."""
    unit_offset: int = 1
    """Added to every unit id before the generator: speechbrain's UnitHIFIGAN reserves id 0."""
    device: str = "cpu"


class SpeechBrainUnitHifiganVocoder:
    """A published speechbrain `UnitHifiganGenerator`: units (T,) -> 16 kHz waveform."""

    sample_rate = SAMPLE_RATE

    def __init__(self, config: SpeechBrainUnitHifiganConfig) -> None:
        self.config = config
        folder = Path(config.path)
        hparams_file, weights_file = folder / HPARAMS_FILE, folder / WEIGHTS_FILE
        for required in (hparams_file, weights_file):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{required} is missing: a speechbrain unit HiFi-GAN folder needs {HPARAMS_FILE} and {WEIGHTS_FILE}."
                )
        arguments = read_generator_arguments(hparams_file)
        if arguments.get("multi_speaker"):
            raise ValueError(f"{hparams_file}: a multi-speaker generator needs speaker embeddings; use a one-voice one.")
        try:
            state = load_checkpoint(weights_file)
        except (UnsafeCheckpointError, UnreadableCheckpointError) as e:
            raise ValueError(f"{weights_file} is not a readable state dict ({type(e).__name__}: {e}).") from e
        generator = _generator_class()(**arguments)
        try:
            generator.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{weights_file} does not match the generator of {hparams_file}: {e}") from e
        generator.remove_weight_norm()
        self.generator = generator.eval().requires_grad_(False).to(config.device)
        self.num_units = int(arguments.get("vocab_size", 100)) - config.unit_offset
        self.duration_predictor = bool(arguments.get("duration_predictor", False))

    @torch.no_grad()
    def __call__(self, units: Tensor) -> Tensor:
        """Vocode units (T,) long -> waveform (S,) float at 16 kHz (T * 320 samples without a duration predictor)."""
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= self.num_units):
            raise ValueError(
                f"unit ids must lie in [0, {self.num_units}) for {self.config.path}, "
                f"got [{int(units.min())}, {int(units.max())}]"
            )
        T = units.numel()
        if T == 0:
            return torch.zeros(0)
        units = units.long() + self.config.unit_offset
        padded = torch.cat([units, units[-1:].repeat(max(MIN_HIFIGAN_UNITS - T, 0))])  # the first conv's padding
        audio = self.generator.inference(padded.to(self.config.device)[None, :, None])[0, 0].float().cpu()
        if self.duration_predictor:
            return audio
        return audio[: audio.numel() * T // padded.numel()]

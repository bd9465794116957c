"""Audio tokens in and out: encoders (waveform -> frames), input features, quantizers (frames -> units), vocoders.

Every waveform is mono at `SAMPLE_RATE` (16 kHz).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.audio.encoders import (
    FbankEncoder,
    FbankEncoderConfig,
    Float16HubertStates,
    HubertEncoder,
    HubertEncoderConfig,
    WaveformEncoder,
    WhisperEncoder,
    WhisperEncoderConfig,
)
from lightning_most.audio.features import FEATURE_KINDS, FeatureConfig, InputFeatures, stack_frames
from lightning_most.audio.learned_units import VQUnitQuantizer, VQUnitsConfig, load_unit_quantizer, train_vq_units
from lightning_most.audio.quantizer import UnitQuantizer, dedup_units, train_kmeans
from lightning_most.audio.speechbrain_vocoder import (
    HPARAMS_FILE,
    SpeechBrainUnitHifiganConfig,
    SpeechBrainUnitHifiganVocoder,
)
from lightning_most.audio.textless import (
    SpiritLMLinearQuantizer,
    convert_sklearn_kmeans,
    load_spiritlm_linear_quantizer,
    load_textless_quantizer,
)
from lightning_most.audio.unit_to_mel import (
    UNIT_TO_MEL_CONFIG,
    UnitToMel,
    UnitToMelConfig,
    UnitToMelVocoder,
    UnitToMelVocoderConfig,
)
from lightning_most.audio.units import attach_units, fit_unit_quantizer
from lightning_most.audio.vocoder import (
    CONFIG_FILE,
    GriffinLimVocoder,
    GriffinLimVocoderConfig,
    UnitHifiganConfig,
    UnitHifiganVocoder,
    UnitHifiganVocoderConfig,
    Vocoder,
    save_unit_hifigan,
)
from lightning_most.audio.waveforms import load_cut_waveform

ENCODERS = ("fbank", "hubert", "whisper")
VOCODERS = ("griffin_lim", "hifigan", "speechbrain_hifigan", "unit_to_mel")


def _config(config_cls, kind: str, name: str, cfg: dict):
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{kind} {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return config_cls(**cfg)


def build_waveform_encoder(name: str, **cfg) -> WaveformEncoder:
    """Build an encoder by name ("fbank", "hubert", "whisper"); `cfg` holds fields of its config dataclass."""
    if name == "fbank":
        return FbankEncoder(_config(FbankEncoderConfig, "audio encoder", name, cfg))
    if name == "hubert":
        return HubertEncoder(_config(HubertEncoderConfig, "audio encoder", name, cfg))
    if name == "whisper":
        return WhisperEncoder(_config(WhisperEncoderConfig, "audio encoder", name, cfg))
    raise ValueError(f"unknown audio encoder {name!r}; choose one of {ENCODERS}")


def build_vocoder(name: str, quantizer: UnitQuantizer | str | None = None, **cfg) -> Vocoder:
    """Build a vocoder by name: "griffin_lim" (needs the units' `quantizer`, object or file), "hifigan" (ours,
    `train_vocoder`), "speechbrain_hifigan" (a published speechbrain folder) or "unit_to_mel" (`prepare_units`).

    `cfg` holds fields of `GriffinLimVocoderConfig`, `UnitHifiganVocoderConfig`, `SpeechBrainUnitHifiganConfig`
    or `UnitToMelVocoderConfig`.
    """
    if name == "griffin_lim":
        if quantizer is None:
            raise ValueError("the griffin_lim vocoder needs `quantizer`: the UnitQuantizer (or its file) of the units")
        if not isinstance(quantizer, UnitQuantizer):
            quantizer = UnitQuantizer.load(quantizer)
        return GriffinLimVocoder(quantizer, _config(GriffinLimVocoderConfig, "vocoder", name, cfg))
    if name == "hifigan":
        return UnitHifiganVocoder(_config(UnitHifiganVocoderConfig, "vocoder", name, cfg))
    if name == "speechbrain_hifigan":
        return SpeechBrainUnitHifiganVocoder(_config(SpeechBrainUnitHifiganConfig, "vocoder", name, cfg))
    if name == "unit_to_mel":
        return UnitToMelVocoder(_config(UnitToMelVocoderConfig, "vocoder", name, cfg))
    raise ValueError(f"unknown vocoder {name!r}; choose one of {VOCODERS}")


def load_vocoder_folder(path: str | Path, device: str = "cpu") -> Vocoder:
    """The vocoder saved in folder `path`, told by its files: `unit_to_mel.json` (unit-to-mel), `hyperparams.yaml`
    (a speechbrain unit HiFi-GAN) or `config.json` (a unit HiFi-GAN written by `train_vocoder`)."""
    folder = Path(path)
    if (folder / UNIT_TO_MEL_CONFIG).is_file():
        return build_vocoder("unit_to_mel", path=str(folder))
    if (folder / HPARAMS_FILE).is_file():
        return build_vocoder("speechbrain_hifigan", path=str(folder), device=device)
    if (folder / CONFIG_FILE).is_file():
        return build_vocoder("hifigan", path=str(folder), device=device)
    raise FileNotFoundError(
        f"{folder} holds no vocoder: expected {UNIT_TO_MEL_CONFIG} (unit-to-mel), {HPARAMS_FILE} + generator.ckpt "
        f"(speechbrain unit HiFi-GAN) or {CONFIG_FILE} + generator.ckpt (unit HiFi-GAN of train_vocoder)"
    )


def audio_io_vocoder(audio_io: dict, device: str = "cpu") -> Vocoder | None:
    """The vocoder a data module's `audio_io()` names: its `vocoder` folder, else Griffin-Lim over the
    `unit_quantizer`'s log-mel centroids; None for units of encoder states (HuBERT, Whisper) without a vocoder folder,
    which Griffin-Lim cannot speak."""
    if audio_io.get("vocoder"):
        return load_vocoder_folder(audio_io["vocoder"], device)
    if (audio_io.get("unit_encoder") or {}).get("encoder", "fbank") != "fbank":
        return None
    return build_vocoder("griffin_lim", quantizer=audio_io["unit_quantizer"])


__all__ = [
    "FEATURE_KINDS",
    "SAMPLE_RATE",
    "FbankEncoder",
    "FbankEncoderConfig",
    "FeatureConfig",
    "Float16HubertStates",
    "GriffinLimVocoder",
    "GriffinLimVocoderConfig",
    "HubertEncoder",
    "HubertEncoderConfig",
    "InputFeatures",
    "SpeechBrainUnitHifiganConfig",
    "SpeechBrainUnitHifiganVocoder",
    "SpiritLMLinearQuantizer",
    "UnitHifiganConfig",
    "UnitHifiganVocoder",
    "UnitHifiganVocoderConfig",
    "UnitQuantizer",
    "UnitToMel",
    "UnitToMelConfig",
    "UnitToMelVocoder",
    "UnitToMelVocoderConfig",
    "VQUnitQuantizer",
    "VQUnitsConfig",
    "Vocoder",
    "WaveformEncoder",
    "WhisperEncoder",
    "WhisperEncoderConfig",
    "attach_units",
    "audio_io_vocoder",
    "build_vocoder",
    "build_waveform_encoder",
    "convert_sklearn_kmeans",
    "dedup_units",
    "fit_unit_quantizer",
    "load_cut_waveform",
    "load_spiritlm_linear_quantizer",
    "load_textless_quantizer",
    "load_unit_quantizer",
    "load_vocoder_folder",
    "save_unit_hifigan",
    "stack_frames",
    "train_kmeans",
    "train_vq_units",
]

"""Audio tokens in and out: encoders (waveform -> frames), unit quantizers (frames -> units), vocoders (units -> waveform)."""

from __future__ import annotations

from dataclasses import fields

from lightning_most.audio.encoders import (
    AudioEncoder,
    FbankEncoder,
    FbankEncoderConfig,
    HubertEncoder,
    HubertEncoderConfig,
)
from lightning_most.audio.quantizer import UnitQuantizer, dedup_units, train_kmeans
from lightning_most.audio.textless import convert_sklearn_kmeans, load_textless_quantizer
from lightning_most.audio.units import attach_units, fit_unit_quantizer, load_waveform

ENCODERS = {"fbank": (FbankEncoder, FbankEncoderConfig), "hubert": (HubertEncoder, HubertEncoderConfig)}


def _build(kind: str, registry: dict, name: str, cfg: dict):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(registry)}")
    cls, config_cls = registry[name]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{kind} {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return cls(config_cls(**cfg))


def build_audio_encoder(name: str, **cfg) -> AudioEncoder:
    """Build an encoder by name ("fbank", "hubert") from the fields of its config dataclass."""
    return _build("audio encoder", ENCODERS, name, cfg)


__all__ = [
    "AudioEncoder",
    "FbankEncoder",
    "FbankEncoderConfig",
    "HubertEncoder",
    "HubertEncoderConfig",
    "UnitQuantizer",
    "attach_units",
    "build_audio_encoder",
    "convert_sklearn_kmeans",
    "dedup_units",
    "fit_unit_quantizer",
    "load_textless_quantizer",
    "load_waveform",
    "train_kmeans",
]

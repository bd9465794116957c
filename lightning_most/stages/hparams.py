"""A stage's hyperparameters as they arrive: config groups given as dicts, fields linked from the data module, and
the flat keys of checkpoints saved before the config groups."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lightning_most.config import ModelConfig, build_config


def as_config(value: Any, cls: type) -> Any:
    """`value` as a `cls` config: the default for None, built from a dict (a checkpoint's YAML-given group)."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value


def with_data_fields(overrides: Any, **linked: int | None) -> Any:
    """`backbone_overrides` with the fields the data module sets (linked by the CLI) added; a conflicting value in
    `backbone_overrides` is refused, naming both."""
    linked = {k: v for k, v in linked.items() if v is not None}
    if not linked:
        return overrides
    values = dataclasses.asdict(overrides) if dataclasses.is_dataclass(overrides) else dict(overrides or {})
    for name, value in linked.items():
        given = values.get(name)
        if given is not None and given != value:
            raise ValueError(
                f"model.init_args.backbone_overrides.{name}={given}, but the data module gives {name}={value} "
                f"(model.init_args.{name}): remove it from backbone_overrides"
            )
        values[name] = value
    return values


def stage_model_config(hparams: Mapping[str, Any]) -> ModelConfig:
    """The backbone config that a stage's hyperparameters build: the preset, its overrides and the fields linked
    from the data module (`audio_feature_dim`, `num_audio_units`)."""
    overrides = with_data_fields(
        hparams.get("backbone_overrides"),
        audio_feature_dim=hparams.get("audio_feature_dim"), num_audio_units=hparams.get("num_audio_units"),
    )
    return build_config(hparams.get("backbone", "tiny"), overrides)


LEGACY_HPARAMS = {  # flat hyperparameter of checkpoints before the config groups -> (group, field)
    "ctc_weight": ("ctc", "weight"),
    "ctc_warmup_steps": ("ctc", "warmup_steps"),
    "asr_positions": ("transcript_positions", "kind"),
    "asr_length_jitter": ("transcript_positions", "length_jitter"),
    "asr_max_new_tokens": ("asr_decoding", "max_new_tokens"),
    "asr_max_tokens_per_frame": ("asr_decoding", "max_tokens_per_frame"),
    "asr_ctc_decoding_weight": ("asr_decoding", "ctc_weight"),
    "asr_beam_size": ("asr_decoding", "beam_size"),
    "asr_word_lm": ("asr_decoding", "word_lm"),
}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a checkpoint saved before the config groups, with each flat `asr_*` / `ctc_*` key
    moved into its group (`LEGACY_HPARAMS`); others are returned as they are."""
    out = {k: v for k, v in hparams.items() if k not in LEGACY_HPARAMS}
    for key, (group, name) in LEGACY_HPARAMS.items():
        if key in hparams:
            value = hparams[key]
            out.setdefault(group, {})[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out

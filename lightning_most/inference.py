"""`MostInference`: a trained stage checkpoint used as ASR, TTS, spoken LM and spoken QA.

It implements the evaluation protocols (`lightning_most.evaluation.protocols`) on our model, with
the audio front and back ends the checkpoint was trained with (its `audio_io`, written by the data
module's `audio_io()`):

    transcribe       waveform -> input features (lhotse Fbank, the frozen Whisper encoder or a HuBERT layer,
                     `InputFeatures`) + stack_frames, as in training (`lightning_most.audio.features`) -> asr prompt
                     |bos| |audio_start| F.. |audio_end| |asr|  -> greedy text
    synthesize       text -> tts prompt |bos| |tts| t.. |audio_start| -> greedy units -> vocoder
    log_likelihood   waveform -> unit encoder (FbankEncoder, the Whisper encoder or a HuBERT layer) + k-means -> units U, scored as
                     |bos| |audio_start| U..: sum over units of log p(u_t | u_<t), the softmax taken
                     over the quantizer's K units
    answer_text      waveform -> speech_instruct prompt |bos| |speech_instruct| |audio_start| F.. |audio_end| |answer|
                     -> greedy text
    answer_written   text -> text_instruct prompt |bos| |text_instruct| q.. |answer| -> greedy text
    answer_speech    synthesize(answer_text(waveform)), each answer within a unit budget scaled to its length
                     (`SpokenAnswerBudget`)
    resynthesize     waveform -> units (as log_likelihood) -> vocoder: the ceiling of the model's TTS

Every method takes a list and runs it as one padded batch (generation is batched over the list).
Waveforms are mono float (S,) at 16 kHz, as in the protocols.

The input feature extractor, the unit encoder and the vocoder are built on first use, so a command
loads only what it needs (transcribe: no vocoder; synthesize: no HuBERT), and a local folder the
checkpoint names (a HuBERT, a vocoder) that is missing or moved fails, when needed, with an
`InferenceError` naming the `audio_io` field and the override that fixes it (`hubert_path`,
`unit_hubert_path`, `vocoder`). A HuBERT read both for the input features and for the units (same
folder and layer, as in MoST) is loaded once.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_most.audio import (
    FbankEncoder,
    FbankEncoderConfig,
    FeatureConfig,
    Float16HubertStates,
    GriffinLimVocoder,
    GriffinLimVocoderConfig,
    HubertEncoder,
    HubertEncoderConfig,
    InputFeatures,
    SpeechBrainUnitHifiganVocoder,
    UnitHifiganVocoder,
    Vocoder,
    VQUnitQuantizer,
    WaveformEncoder,
    WhisperEncoder,
    WhisperEncoderConfig,
    load_unit_quantizer,
    load_vocoder_folder,
    stack_frames,
)
from lightning_most.audio.constants import SAMPLE_RATE
from lightning_most.batch import IGNORE_INDEX, Batch, Modality, Task
from lightning_most.evaluation.normalize import normalize_text
from lightning_most.layouts import (
    Example,
    asr_example,
    collate,
    speech_instruct_example,
    text_instruct_example,
    tts_example,
)
from lightning_most.safe_loading import UnreadableCheckpointError, UnsafeCheckpointError, load_checkpoint
from lightning_most.stages.base import StageModule
from lightning_most.stages.hparams import LEGACY_HPARAMS, upgrade_hparams
from lightning_most.stages.stage1 import Stage1Module


class InferenceError(ValueError):
    """A checkpoint or audio input that inference cannot use; the message names the file and the fix."""


@dataclass
class AudioIO:
    """How audio became model inputs and targets in training (a checkpoint's `audio_io`)."""

    features: FeatureConfig
    """ASR / instruction input features (lhotse fbank, Whisper encoder states or HuBERT layer states, frames stacked)."""
    unit_quantizer: Path
    """k-means centroids (safetensors) of the discrete units."""
    unit_encoder: FbankEncoderConfig | WhisperEncoderConfig | HubertEncoderConfig
    """The frames the units were quantized from: log-mel settings (that Griffin-Lim inverts), a Whisper encoder or a
    HuBERT layer."""
    num_units: int
    """K, the units the data used (the backbone may have more unit slots)."""
    vocoder: Path | None = None
    """The folder of the vocoder made for these units (unit-to-mel, unit HiFi-GAN or speechbrain unit HiFi-GAN);
    None = Griffin-Lim over the quantizer's log-mel centroids (log-mel units only)."""

    @classmethod
    def from_dict(cls, audio_io: dict[str, Any], source: str) -> AudioIO:
        """Read the `audio_io` dict of a checkpoint (`source` names it in errors)."""
        fix = (
            "train with a data module that has audio_io() (e.g. datamodules.EmbeddedDataModule), or pass "
            "audio_io={'features': ..., 'unit_quantizer': ..., 'unit_encoder': ...} (CLI: --audio_io FILE.json)"
        )
        if not audio_io:
            raise InferenceError(f"{source} has no audio_io (how audio became features and units): {fix}")
        if is_text_only(audio_io):
            raise InferenceError(
                f"{source} was trained on text only (its audio_io names no unit quantizer and no unit encoder, as a "
                "text data module such as conf/pretrain_text.yaml's writes): it can neither hear nor speak; use it "
                "for text (evaluate --suites text), or pass audio_io={...} (CLI: --audio_io FILE.json)"
            )
        missing = [key for key in ("features", "unit_quantizer", "unit_encoder") if key not in audio_io]
        if missing:
            raise InferenceError(f"{source}: audio_io lacks {missing}: {fix}")
        features = FeatureConfig(**audio_io["features"])
        if features.kind == "precomputed":
            raise InferenceError(
                f"{source}: audio_io.features.kind='precomputed'; inference computes 'fbank', 'whisper' and 'hubert' "
                "features from audio, but not features some other tool stored with the cuts"
            )
        encoder = audio_io["unit_encoder"]
        if encoder.get("encoder") == "fbank":
            unit_encoder = FbankEncoderConfig(**encoder["encoder_config"])
        elif encoder.get("encoder") == "whisper":
            settings = encoder["encoder_config"]
            unit_encoder = WhisperEncoderConfig(path=settings["whisper_path"], compute_type=settings["compute_type"])
        elif encoder.get("encoder") == "hubert":
            settings = encoder["encoder_config"]
            unit_encoder = HubertEncoderConfig(path=settings["path"], layer=int(settings["layer"]))
        else:
            raise InferenceError(
                f"{source}: audio_io.unit_encoder.encoder={encoder.get('encoder')!r}; only 'fbank', 'whisper' and "
                "'hubert' units are supported here (the unit_quantizer.json written beside the quantizer says which)"
            )
        return cls(
            features=features,
            unit_quantizer=Path(audio_io["unit_quantizer"]),
            unit_encoder=unit_encoder,
            num_units=int(audio_io.get("num_units", encoder["num_units"])),
            vocoder=Path(audio_io["vocoder"]) if audio_io.get("vocoder") else None,
        )


@dataclass
class SpokenAnswerBudget:
    """Units a spoken answer may take: `units_per_character` x the characters of its text + `margin`, at most the
    module's `tts_max_new_tokens`. Small models rarely emit <audio_end>: with the fixed budget alone (600 units, 12 s)
    every one-word answer was 12 s of speech to decode, vocode and judge (spoken QA, 300 questions: over 23 min)."""

    units_per_character: float = 4.0
    """Units per character of the answer's spoken form (`normalize_text`: lower case, no punctuation, numbers spelt
    out). The embedded corpus (50 units/s) speaks its 1,500 train sentences at 2.9 units per character (17 characters
    a second) plus 28 units of silence on average; 4.0 per character + the 80-unit margin covers every one of them,
    the slowest voices (the 0.9x speed variants) included."""
    margin: int = 80
    """Units added to every answer: the silence around the words, and room for slower voices."""

    def __post_init__(self) -> None:
        if not self.units_per_character > 0:
            raise ValueError(f"SpokenAnswerBudget.units_per_character must be > 0, got {self.units_per_character}")
        if self.margin < 0:
            raise ValueError(f"SpokenAnswerBudget.margin must be >= 0, got {self.margin}")

    def units(self, text: str, cap: int) -> int:
        """The unit budget of speaking `text`: its spoken characters x the rate + the margin, at most `cap`."""
        return min(cap, math.ceil(self.units_per_character * len(normalize_text(text))) + self.margin)


def _stage_class(hparams: dict[str, Any], source: str) -> type[StageModule]:
    """The StageModule subclass named by LightningCLI's `_class_path` (Stage1Module when absent)."""
    class_path = hparams.get("_class_path")
    if class_path is None:
        return Stage1Module
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("lightning_most."):
        raise InferenceError(f"{source} was saved by {class_path!r}, not by a lightning_most stage module")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, StageModule)):
        raise InferenceError(f"{source}: {class_path!r} is not a StageModule subclass")
    return cls


def _upgraded(path: str | Path, header: dict[str, Any]) -> str | io.BytesIO:
    """The checkpoint to load: `path`, or, if it was saved before the config groups (flat `asr_*` / `ctc_*`
    hyperparameters), an in-memory copy with them moved into their groups (`stages.hparams.upgrade_hparams`)."""
    if not LEGACY_HPARAMS.keys() & header["hyper_parameters"].keys():
        return str(path)
    checkpoint = load_checkpoint(path, mmap=True)
    checkpoint["hyper_parameters"] = upgrade_hparams(checkpoint["hyper_parameters"])
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


def _with_local_folders(
    audio_io: AudioIO, device: str, hubert_path: str | Path | None, unit_hubert_path: str | Path | None
) -> AudioIO:
    """`audio_io` with its HuBERT encoders on `device` and the HuBERT folders replaced where given.

    `hubert_path` replaces the input features' folder and the units' when the checkpoint named the same one;
    `unit_hubert_path` replaces the units' alone.
    """
    features, unit_encoder = audio_io.features, audio_io.unit_encoder
    units_hubert = isinstance(unit_encoder, HubertEncoderConfig)
    same_folder = (
        features.kind == "hubert" and units_hubert and Path(features.hubert_path).resolve() == Path(unit_encoder.path).resolve()
    )
    if hubert_path is not None and features.kind != "hubert":
        raise InferenceError(
            f"hubert_path (--hubert_path) replaces audio_io.features.hubert_path, but the checkpoint's input features "
            f"are {features.kind!r}, not HuBERT states (for the units' HuBERT use unit_hubert_path)"
        )
    if unit_hubert_path is not None and not units_hubert:
        raise InferenceError(
            "unit_hubert_path (--unit_hubert_path) replaces the units' HuBERT folder, but the checkpoint's units are "
            f"k-means of {audio_io.unit_encoder.__class__.__name__.removesuffix('Config')} frames"
        )
    if features.kind == "hubert":
        path = str(hubert_path) if hubert_path is not None else features.hubert_path
        features = dataclasses.replace(features, hubert_path=path, hubert_device=device)
    if units_hubert:
        path = unit_hubert_path if unit_hubert_path is not None else hubert_path if same_folder else None
        unit_encoder = dataclasses.replace(unit_encoder, path=str(path or unit_encoder.path), device=device)
    return dataclasses.replace(audio_io, features=features, unit_encoder=unit_encoder)


def read_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's non-tensor entries (memory-mapped read); raises InferenceError if it is not one of ours."""
    path = Path(path)
    if path.is_dir():
        raise InferenceError(
            f"checkpoint {path} is a folder (a sharded ModelParallelStrategy checkpoint?): consolidate it with "
            f"`python -m lightning.pytorch.utilities.consolidate_checkpoint {path}` and pass the file it writes, "
            f"{path}.consolidated"
        )
    if not path.is_file():
        raise InferenceError(
            f"checkpoint {path} does not exist: pass the .ckpt a fit run wrote (e.g. .../checkpoints/last.ckpt)"
        )
    try:
        checkpoint = load_checkpoint(path, mmap=True)
    except (UnsafeCheckpointError, UnreadableCheckpointError) as error:
        raise InferenceError(str(error)) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise InferenceError(f"{path} is not a Lightning checkpoint of a stage module (no state_dict/hyper_parameters)")
    return {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}


def is_text_only(audio_io: dict[str, Any] | None) -> bool:
    """Whether a checkpoint's `audio_io` is a text-only data module's: no unit quantizer and no unit encoder."""
    return bool(audio_io) and not audio_io.get("unit_quantizer") and not audio_io.get("unit_encoder")


def _load_module(
    path: str | Path,
    header: dict[str, Any],
    device: str,
    max_new_tokens: int | None,
    max_units: int | None,
    word_lm: bool,
) -> StageModule:
    """The stage module of checkpoint `path` (its `header` read), on `device`, in eval mode, decoding budgets set."""
    stage = _stage_class(header["hyper_parameters"], str(path))
    try:
        module = stage.load_from_checkpoint(_upgraded(path, header), map_location=device, weights_only=True)
    except RuntimeError as error:  # load_state_dict: the weights do not fit the model the hyperparameters build
        first = str(error).strip().splitlines()
        raise InferenceError(
            f"checkpoint {path} does not fit the {stage.__name__} its hyperparameters build with this version of "
            f"lightning_most ({' '.join(line.strip() for line in first[:2])[:300]}...): load it with the code "
            "version that trained it"
        ) from error
    module.to(device)
    if max_new_tokens is not None:
        module.asr_decoding.max_new_tokens = max_new_tokens
    if max_units is not None:
        module.hparams.tts_max_new_tokens = max_units
    if not word_lm:
        module.asr_decoding.word_lm = None
    try:
        module.setup("predict")  # counts the word LM, if any, now: a moved text file fails here
    except (FileNotFoundError, ValueError) as error:
        raise InferenceError(
            f"checkpoint {path} decodes ASR with a word LM that cannot be counted here ({error}): run from the "
            "folder it was trained in, or decode without the LM (--no_word_lm)"
        ) from error
    return module.eval()


def load_stage_module(path: str | Path, device: str = "cpu", word_lm: bool = True) -> tuple[StageModule, int]:
    """(stage module, training step) of a checkpoint, without its audio front and back ends: for text alone, and for
    checkpoints trained on text only (`is_text_only`).

    Args:
        path: the `.ckpt` file.
        device: torch device to run on.
        word_lm: keep the checkpoint's `asr_decoding.word_lm` (counted on load) if it has one (False: drop it).
    """
    header = read_checkpoint_header(path)
    module = _load_module(path, header, device, None, None, word_lm)
    return module, int(header.get("global_step", 0))


def _check_hubert_folder(path: str, field: str, override: str, role: str) -> None:
    """InferenceError naming `field` and the `override` unless `path` holds a HuBERT (config.json + weights)."""
    folder = Path(path)
    has_weights = any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    if not (folder / "config.json").is_file() or not has_weights:
        raise InferenceError(
            f"{field}={path}: no HuBERT folder there (config.json + weights; {role}): pass {override} DIR, the "
            "HubertModel folder (save_pretrained) the checkpoint was trained with, where it is now"
        )


def _vocoder_units(vocoder: Vocoder) -> int | None:
    """The unit vocabulary of a HiFi-GAN vocoder (None for vocoders that do not state one)."""
    if isinstance(vocoder, UnitHifiganVocoder):
        return vocoder.generator_config.vocab_size
    if isinstance(vocoder, SpeechBrainUnitHifiganVocoder):
        return vocoder.num_units
    return None


class MostInference:
    """A stage module in eval mode with its audio front end, unit quantizer and vocoder (see module docstring)."""

    def __init__(
        self,
        module: StageModule,
        audio_io: AudioIO,
        vocoder: Vocoder | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
        answer_budget: SpokenAnswerBudget | None = None,
    ) -> None:
        """Wrap `module` (backbone built, weights loaded).

        Args:
            module: the stage module.
            audio_io: its audio front and back ends.
            vocoder: units -> 16 kHz audio; None = the vocoder folder of `audio_io.vocoder`, else Griffin-Lim over
                the quantizer's log-mel centroids (built on first use).
            temperature: unit sampling temperature of synthesis (0 = greedy).
            top_k: sample units among the k most likely only.
            seed: seeds unit sampling, afresh in every call (the same texts give the same speech).
            answer_budget: the unit budget of each spoken answer (`answer_speech`); default `SpokenAnswerBudget()`.
        """
        self.module = module.eval()
        self.audio_io = audio_io
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.answer_budget = answer_budget or SpokenAnswerBudget()
        self.global_step = 0  # training step of the checkpoint (set by from_checkpoint)
        if not audio_io.unit_quantizer.is_file():
            raise InferenceError(
                f"unit quantizer {audio_io.unit_quantizer} (named by the checkpoint's audio_io) does not exist: "
                "rebuild the corpus it came from, or pass unit_quantizer=PATH (CLI: --unit_quantizer PATH)"
            )
        self.quantizer = load_unit_quantizer(audio_io.unit_quantizer, num_units=audio_io.num_units)
        self._given_vocoder = vocoder

    @cached_property
    def input_extractor(self) -> InputFeatures:
        """Waveform -> input frames, as the data module computed them in training."""
        features = self.audio_io.features
        if features.kind == "hubert":
            _check_hubert_folder(
                features.hubert_path, "audio_io.features.hubert_path", "hubert_path=PATH (CLI: --hubert_path)",
                f"the model's input is its layer-{features.hubert_layer} states",
            )
        return InputFeatures(features, num_threads=0)

    @cached_property
    def unit_encoder(self) -> WaveformEncoder:
        """Waveform -> the frames the units were quantized from (HuBERT: float16-rounded states, its model shared with
        the input features when the same)."""
        config = self.audio_io.unit_encoder
        if isinstance(config, FbankEncoderConfig):
            return FbankEncoder(config)
        if isinstance(config, WhisperEncoderConfig):
            return WhisperEncoder(config)
        features = self.audio_io.features
        if (
            features.kind == "hubert"
            and Path(features.hubert_path).resolve() == Path(config.path).resolve()
            and features.hubert_layer == config.layer
        ):
            return Float16HubertStates(self.input_extractor.hubert)
        _check_hubert_folder(
            config.path, "audio_io.unit_encoder.encoder_config.path", "unit_hubert_path=PATH (CLI: --unit_hubert_path)",
            f"the units are k-means of its layer-{config.layer} states",
        )
        return Float16HubertStates(HubertEncoder(config))

    @cached_property
    def vocoder(self) -> Vocoder:
        """Units -> 16 kHz audio: the given vocoder, the folder `audio_io.vocoder` names, or Griffin-Lim (log-mel units)."""
        folder, vocoder = self.audio_io.vocoder, self._given_vocoder
        fix = "pass vocoder=DIR (CLI: --vocoder DIR)"
        if vocoder is None and folder is not None:
            if not folder.is_dir():
                raise InferenceError(
                    f"audio_io.vocoder={folder}: no such folder (the vocoder the checkpoint's units were made for): {fix} "
                    "where it is now"
                )
            try:
                vocoder = load_vocoder_folder(folder, str(self.device))
            except (FileNotFoundError, ValueError, TypeError) as error:
                raise InferenceError(f"vocoder {folder}: {error}") from error
        elif vocoder is None and isinstance(self.audio_io.unit_encoder, FbankEncoderConfig):
            vocoder = GriffinLimVocoder(self.quantizer, GriffinLimVocoderConfig(fbank=self.audio_io.unit_encoder))
        elif vocoder is None:
            kind = "HuBERT" if isinstance(self.audio_io.unit_encoder, HubertEncoderConfig) else "Whisper"
            raise InferenceError(
                f"the checkpoint's units are k-means of {kind} states, which only a vocoder trained on them speaks, and "
                f"its audio_io.vocoder is empty: {fix}, a unit HiFi-GAN trained on these units "
                "(python -m lightning_most.audio.train_vocoder) or a speechbrain unit HiFi-GAN folder"
            )
        known = _vocoder_units(vocoder)
        if known is not None and known < self.audio_io.num_units:
            source = getattr(getattr(vocoder, "config", None), "path", "the vocoder")
            raise InferenceError(
                f"vocoder {source} knows {known} units but the model's data has {self.audio_io.num_units}: "
                "train a vocoder on these units"
            )
        if vocoder.sample_rate != SAMPLE_RATE:
            raise InferenceError(f"the vocoder writes {vocoder.sample_rate} Hz audio; the protocols need {SAMPLE_RATE} Hz")
        return vocoder

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        vocoder: str | Path | None = None,
        audio_io: dict[str, Any] | None = None,
        unit_quantizer: str | Path | None = None,
        hubert_path: str | Path | None = None,
        unit_hubert_path: str | Path | None = None,
        max_new_tokens: int | None = None,
        max_units: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
        word_lm: bool = True,
    ) -> MostInference:
        """Load a stage checkpoint written by `fit`.

        Args:
            path: the `.ckpt` file.
            device: torch device to run on (the model, a HuBERT encoder, a HiFi-GAN vocoder).
            vocoder: a vocoder folder: unit HiFi-GAN (config.json + generator.ckpt), speechbrain unit HiFi-GAN
                (hyperparams.yaml + generator.ckpt) or unit-to-mel (unit_to_mel.json + weights); replaces the one the
                checkpoint names (`AudioIO.vocoder`; none: Griffin-Lim over log-mel units).
            audio_io: replaces the checkpoint's `audio_io` (for checkpoints saved without one).
            unit_quantizer: replaces the quantizer path of `audio_io` (when the corpus moved).
            hubert_path: replaces the HuBERT folder of the input features (`audio_io.features.hubert_path`), and the
                units' when it was the same folder (when the HuBERT moved).
            unit_hubert_path: replaces the units' HuBERT folder alone (`audio_io.unit_encoder`).
            max_new_tokens: text decoding budget (default: the module's `asr_decoding.max_new_tokens`).
            max_units: unit decoding budget of synthesis (default: the module's `tts_max_new_tokens`).
            temperature: unit sampling temperature of synthesis (0 = greedy).
            top_k: sample units among the k most likely only.
            seed: seeds unit sampling.
            word_lm: decode ASR with the checkpoint's `asr_decoding.word_lm` if it has one (False: without it).
        """
        header = read_checkpoint_header(path)
        raw_audio_io = dict(audio_io if audio_io is not None else header.get("audio_io") or {})
        if unit_quantizer is not None:
            raw_audio_io["unit_quantizer"] = str(unit_quantizer)
        if vocoder is not None:
            raw_audio_io["vocoder"] = str(vocoder)
        parsed = _with_local_folders(AudioIO.from_dict(raw_audio_io, str(path)), device, hubert_path, unit_hubert_path)
        module = _load_module(path, header, device, max_new_tokens, max_units, word_lm)
        inference = cls(module, parsed, temperature=temperature, top_k=top_k, seed=seed)
        inference.global_step = int(header.get("global_step", 0))
        return inference

    # ---- front ends --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the backbone lives."""
        return self.module.device

    @property
    def min_input_samples(self) -> int:
        """Shortest waveform that gives one stacked input frame."""
        return self.input_extractor.min_samples

    def input_features(self, waveform: Tensor) -> Tensor:
        """ASR input features exactly as in training: (S,) -> (T // frame_stack, F * frame_stack)."""
        if waveform.dim() != 1:
            raise InferenceError(f"expected a mono waveform (S,), got shape {tuple(waveform.shape)}")
        if waveform.numel() < self.min_input_samples:
            raise InferenceError(
                f"a waveform of {waveform.numel()} samples is too short: the model's input needs at least "
                f"{self.min_input_samples} samples ({self.min_input_samples / SAMPLE_RATE * 1000:.0f} ms at 16 kHz)"
            )
        frames = self.input_extractor(waveform.float().cpu().numpy())  # (T, F)
        return stack_frames(frames, self.audio_io.features.frame_stack)

    def units(self, waveforms: list[Tensor]) -> list[Tensor]:
        """Discrete units (T,) of each waveform, as the training targets were made (encoder + k-means)."""
        if not waveforms:
            return []
        # Whisper, HuBERT, or a learnt quantizer (its convolution reads neighbouring frames): one utterance at a time,
        # (S,) -> (T, F) -> (T,); log-mel frames with k-means (frame by frame): one padded batch
        if not isinstance(self.unit_encoder, FbankEncoder) or isinstance(self.quantizer, VQUnitQuantizer):
            return [self.quantizer.quantize(self.unit_encoder(w.float().cpu())).cpu() for w in waveforms]
        lengths = torch.tensor([w.numel() for w in waveforms])
        padded = torch.nn.utils.rnn.pad_sequence([w.float().cpu() for w in waveforms], batch_first=True)  # (B, S)
        features, frames = self.unit_encoder.encode_batch(padded, lengths)  # (B, T, F), (B,)
        valid = torch.arange(features.shape[1])[None] < frames[:, None]  # (B, T)
        units = self.quantizer.quantize(features[valid])  # (sum of frames,)
        return list(units.cpu().split(frames.tolist()))

    def _batch(self, examples: list[Example]) -> Batch:
        batch = collate(examples, pad_id=self.module.specials.pad)
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    # ---- protocols ---------------------------------------------------------------------------
    def transcribe(self, waveforms: list[Tensor]) -> list[str]:
        """Greedy transcript of each 16 kHz waveform (S,) (the `Transcriber` protocol)."""
        if not waveforms:
            return []
        m = self.module
        examples = [
            asr_example([], m.specials, m.config.text_vocab_size, features=self.input_features(w)) for w in waveforms
        ]
        return m.decoder.transcribe(self._batch(examples))

    def synthesize_units(self, texts: list[str], max_units: list[int] | None = None) -> list[Tensor]:
        """Units (T,) spoken for each text, greedy or sampled at `temperature`, each at most its `max_units` (default:
        the module's `tts_max_new_tokens`).

        Decoding may emit only the data's K units (the backbone may have more unit slots) or <audio_end>. The batch
        decodes for its largest budget; a row cut at its own budget is what stopping there would have given (a unit
        depends only on the ones before it).
        """
        if not texts:
            return []
        m = self.module
        budgets = max_units if max_units is not None else [m.hparams.tts_max_new_tokens] * len(texts)
        if len(budgets) != len(texts):
            raise ValueError(f"synthesize_units: {len(budgets)} unit budgets for {len(texts)} texts")
        empty = torch.zeros(0, dtype=torch.long)
        examples = [tts_example(m.tokenizer.encode(t), empty, m.specials, m.config.text_vocab_size) for t in texts]
        generator = torch.Generator(self.device).manual_seed(self.seed)
        units = m.decoder.units(self._batch(examples), max(budgets), self.audio_io.num_units,
                                self.temperature, self.top_k, generator)
        return [u[:budget] for u, budget in zip(units, budgets)]

    def vocode(self, units: list[Tensor]) -> list[Tensor]:
        """16 kHz waveform (S,) of each unit sequence (T,)."""
        return [self.vocoder(u).float().cpu() for u in units]

    def synthesize(self, texts: list[str]) -> list[Tensor]:
        """One 16 kHz waveform (S,) per text (the `Synthesizer` protocol)."""
        return self.vocode(self.synthesize_units(texts))

    def resynthesize(self, waveforms: list[Tensor]) -> list[Tensor]:
        """Each 16 kHz waveform (S,) spoken again from its own units through the vocoder (the `Resynthesizer` protocol)."""
        return self.vocode(self.units(waveforms))

    @torch.no_grad()
    def log_likelihood(self, waveforms: list[Tensor]) -> list[tuple[float, int]]:
        """(sum of unit log-probabilities, number of units) per waveform (the `AudioLikelihoodScorer` protocol)."""
        if not waveforms:
            return []
        m = self.module
        s, V, K = m.specials, m.config.text_vocab_size, self.audio_io.num_units
        units = self.units(waveforms)
        examples = []
        for u in units:  # |bos| |audio_start| U..  (the speech prefix of the asr / speech_instruct layouts)
            ids = torch.cat([torch.tensor([s.bos, s.audio_start]), u + V])
            modality = torch.cat([torch.full((2,), Modality.TEXT), torch.full((u.numel(),), Modality.AUDIO)])
            examples.append(
                Example(
                    Task.ASR,
                    ids,
                    modality,
                    torch.zeros_like(ids, dtype=torch.bool),
                    torch.full_like(ids, IGNORE_INDEX),
                    None,
                    prompt_length=ids.numel(),
                )
            )
        batch = self._batch(examples)
        was_training = m.backbone.training
        m.backbone.eval()
        logits = m(batch).logits[:, :-1, V : V + K].float()  # (B, T-1, K): position t predicts unit t+1
        m.backbone.train(was_training)
        log_probs = logits.log_softmax(dim=-1)
        targets = batch["input_ids"][:, 1:] - V  # (B, T-1)
        is_unit = (batch["modality_ids"][:, 1:] == Modality.AUDIO) & batch["attention_mask"][:, 1:]  # (B, T-1)
        picked = log_probs.gather(-1, targets.clamp(0, K - 1)[..., None])[..., 0]  # (B, T-1)
        totals = (picked * is_unit).sum(dim=1)  # (B,)
        return [(float(total), int(u.numel())) for total, u in zip(totals.cpu(), units)]

    @property
    def answer_max_new_tokens(self) -> int:
        """Decoding budget of an answer: a stage-2 checkpoint's `answer_max_new_tokens`, else the transcripts'."""
        return int(self.module.hparams.get("answer_max_new_tokens") or self.module.asr_decoding.max_new_tokens)

    def answer_text(self, waveforms: list[Tensor]) -> list[str]:
        """Greedy text answer to each spoken question (S,) (the `SpokenQuestionAnswerer` protocol)."""
        if not waveforms:
            return []
        m = self.module
        examples = [
            speech_instruct_example([], m.specials, m.config.text_vocab_size, features=self.input_features(w))
            for w in waveforms
        ]
        return m.decoder.answer(self._batch(examples), self.answer_max_new_tokens)

    def answer_written(self, questions: list[str]) -> list[str]:
        """Greedy text answer to each written question (the text_instruct layout, prompt up to <answer>)."""
        if not questions:
            return []
        m = self.module
        examples = [text_instruct_example(m.tokenizer.encode(q), [], m.specials) for q in questions]
        return m.decoder.answer(self._batch(examples), self.answer_max_new_tokens)

    def answer_speech(self, waveforms: list[Tensor]) -> list[Tensor]:
        """Spoken answer (S,) to each spoken question: the text answer, synthesized within `answer_budget` units."""
        answers = self.answer_text(waveforms)
        cap = self.module.hparams.tts_max_new_tokens
        return self.vocode(self.synthesize_units(answers, [self.answer_budget.units(a, cap) for a in answers]))

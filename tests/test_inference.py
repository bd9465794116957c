"""MostInference on a 3-step checkpoint: loading, the training front ends, and each protocol's invariants.

The model is barely trained, so the tests check shapes, counts, determinism and agreement with the
training pipeline, not quality.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from lhotse import CutSet

from datamodules.dataset import MostDataset
from datamodules.embedded import corpus_paths
from lightning_most.audio import VQUnitQuantizer, VQUnitsConfig, load_cut_waveform
from lightning_most.audio.waveforms import read_wav
from lightning_most.evaluation.protocols import (
    AudioLikelihoodScorer,
    Resynthesizer,
    SpokenQuestionAnswerer,
    Synthesizer,
    Transcriber,
)
from lightning_most.inference import InferenceError, MostInference, SpokenAnswerBudget
from lightning_most.stages.hparams import LEGACY_HPARAMS
from lightning_most.stages.stage1 import Stage1Module

if TYPE_CHECKING:
    from tests.fixtures_checkpoint import TrainedRun

pytest_plugins = ["tests.fixtures_checkpoint"]  # the shared `trained_run` fixture

SAMPLES_PER_UNIT = 320  # 50 Hz units at 16 kHz


@pytest.fixture(scope="module")
def inference(trained_run: TrainedRun) -> MostInference:
    return MostInference.from_checkpoint(trained_run.checkpoint)


@pytest.fixture(scope="module")
def test_cuts(trained_run: TrainedRun) -> CutSet:
    return CutSet.from_file(corpus_paths(trained_run.corpus_dir).cuts["test"])


@pytest.fixture(scope="module")
def waveforms(trained_run: TrainedRun) -> list[torch.Tensor]:
    return [read_wav(path) for path in trained_run.test_wavs[:3]]


def test_loads_the_trained_stage_class_and_its_audio_io(inference: MostInference, trained_run: TrainedRun) -> None:
    assert type(inference.module) is Stage1Module
    assert not inference.module.backbone.training
    assert inference.global_step == 3
    assert inference.audio_io.num_units == trained_run.num_units
    assert inference.audio_io.features.kind == "whisper" and inference.audio_io.features.frame_stack == 2
    assert inference.audio_io.unit_quantizer == corpus_paths(trained_run.corpus_dir).unit_quantizer.resolve()
    assert inference.module.asr_decoding.max_new_tokens == trained_run.text_budget
    for protocol in (Transcriber, Synthesizer, AudioLikelihoodScorer, SpokenQuestionAnswerer):
        assert isinstance(inference, protocol)


def test_input_features_are_the_training_features(
    inference: MostInference, test_cuts: CutSet, trained_run: TrainedRun
) -> None:
    dataset = MostDataset(features=inference.audio_io.features)
    cut = next(iter(test_cuts))
    on_the_fly = dataset.example(cut.with_custom("task", "asr")).audio_features  # (T, 768): Whisper states x 2
    computed = inference.input_features(load_cut_waveform(cut))
    assert computed.shape == on_the_fly.shape == (on_the_fly.shape[0], 768)
    torch.testing.assert_close(computed, on_the_fly)
    # fit read the states stored with the corpus (float16): the same frames
    stored_cuts = CutSet.from_file(trained_run.corpus_dir / "whisper_features" / "embedded_cuts_test.jsonl.gz").to_eager()
    stored = dataset.example(stored_cuts[cut.id].with_custom("task", "asr")).audio_features
    torch.testing.assert_close(stored, computed, atol=2e-2, rtol=2e-3)


def test_units_are_the_training_targets(inference: MostInference, test_cuts: CutSet) -> None:
    cuts = list(test_cuts)[:3]
    units = inference.units([load_cut_waveform(cut) for cut in cuts])
    for cut, u in zip(cuts, units):
        assert torch.equal(u, torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64)))


def test_a_learnt_quantizer_is_read_and_quantizes_each_utterance_alone(
    trained_run: TrainedRun, test_cuts: CutSet, tmp_path: Path
) -> None:
    path = tmp_path / "vq.safetensors"
    torch.manual_seed(0)
    VQUnitQuantizer(VQUnitsConfig(code_dim=8, hidden=16), trained_run.num_units, torch.zeros(160), torch.ones(160)).save(path)
    inference = MostInference.from_checkpoint(trained_run.checkpoint, unit_quantizer=path)
    assert isinstance(inference.quantizer, VQUnitQuantizer)
    waves = [load_cut_waveform(cut) for cut in list(test_cuts)[:3]]
    for wave, units in zip(waves, inference.units(waves)):  # no frame of another utterance in a unit's context
        assert torch.equal(units, inference.quantizer.quantize(inference.unit_encoder(wave)))


def test_resynthesis_is_the_cuts_own_units_through_the_vocoder(inference: MostInference, test_cuts: CutSet) -> None:
    assert isinstance(inference, Resynthesizer)
    cuts = list(test_cuts)[:2]
    waves = inference.resynthesize([load_cut_waveform(cut) for cut in cuts])
    for cut, wave in zip(cuts, waves):
        units = torch.from_numpy(np.asarray(cut.load_units(), dtype=np.int64))
        assert torch.equal(wave, inference.vocoder(units))  # encoder + k-means as in training, then the vocoder


def test_transcribe_gives_one_string_per_waveform_independent_of_batching(
    inference: MostInference, waveforms: list[torch.Tensor], trained_run: TrainedRun
) -> None:
    batched = inference.transcribe(waveforms)
    assert len(batched) == len(waveforms) and all(isinstance(text, str) for text in batched)
    assert all(len(text) <= trained_run.text_budget for text in batched)  # one character at most per decoded byte
    assert batched == [inference.transcribe([w])[0] for w in waveforms]
    assert inference.transcribe([]) == []


def test_synthesize_gives_320_samples_per_unit(inference: MostInference, trained_run: TrainedRun) -> None:
    sampling = MostInference(inference.module, inference.audio_io, temperature=1.0, seed=0)
    texts = ["hello world", "the cat sat on the mat", "one two three"]
    units = sampling.synthesize_units(texts)
    again = sampling.synthesize_units(texts)  # the seed is applied afresh in every call
    assert all(torch.equal(a, b) for a, b in zip(units, again))
    assert sum(u.numel() for u in units) > 0, "sampling 3 texts from a near-uniform model gave no unit at all"
    for u in units:
        assert u.dtype == torch.long and u.numel() <= trained_run.unit_budget
        assert u.numel() == 0 or (0 <= int(u.min()) and int(u.max()) < trained_run.num_units)
    speech = sampling.synthesize(texts)
    assert [w.numel() for w in speech] == [u.numel() * SAMPLES_PER_UNIT for u in units]
    assert all(w.dtype == torch.float32 and bool(torch.isfinite(w).all()) for w in speech)


def test_log_likelihood_sums_unit_log_probs(inference: MostInference, waveforms: list[torch.Tensor]) -> None:
    scores = inference.log_likelihood(waveforms)
    units = inference.units(waveforms)
    assert [n for _, n in scores] == [u.numel() for u in units]
    assert [n for _, n in scores] == [inference.unit_encoder.num_frames(w.numel()) for w in waveforms]
    for total, n in scores:
        assert math.isfinite(total) and total < 0
        assert total / n > -20  # an untrained model is near log(1/K) = -2.8 per unit, far from -inf
    singles = [inference.log_likelihood([w])[0] for w in waveforms]
    for (batched, n), (single, m) in zip(scores, singles):
        assert n == m and batched == pytest.approx(single, rel=1e-4)


def test_answers_in_text_and_speech(inference: MostInference, waveforms: list[torch.Tensor]) -> None:
    texts = inference.answer_text(waveforms[:2])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    speech = inference.answer_speech(waveforms[:2])
    assert len(speech) == 2 and all(w.dim() == 1 and w.numel() % SAMPLES_PER_UNIT == 0 for w in speech)


def test_a_long_winded_model_stops_a_short_spoken_answer_at_its_scaled_budget(
    inference: MostInference, waveforms: list[torch.Tensor], trained_run: TrainedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that never ends its units speaks each answer for units_per_character x its spoken characters + margin
    units, at most tts_max_new_tokens; plain synthesis keeps the whole tts_max_new_tokens."""
    module = inference.module
    audio_end = module.specials.audio_end

    def never_end(_backbone, _inputs, output) -> None:
        output.logits[..., audio_end] = float("-inf")  # (B, T, V)

    budget = SpokenAnswerBudget(units_per_character=2.0, margin=3)
    long_winded = MostInference(module, inference.audio_io, vocoder=inference.vocoder, answer_budget=budget)
    answers = ["Paris.", "19", "an answer long enough for the cap to stop it"]
    monkeypatch.setattr(long_winded, "answer_text", lambda questions: answers[: len(questions)])
    hook = module.backbone.register_forward_hook(never_end)
    try:
        speech = long_winded.answer_speech(waveforms[:3])
        plain = long_winded.synthesize_units(answers[:1])
    finally:
        hook.remove()
    # "paris": 5 characters; "19" is spoken "nineteen": 8; the third's 2 x 44 + 3 = 91 > the checkpoint's 40
    assert [w.numel() // SAMPLES_PER_UNIT for w in speech] == [2 * 5 + 3, 2 * 8 + 3, trained_run.unit_budget]
    assert plain[0].numel() == trained_run.unit_budget
    with pytest.raises(ValueError, match="units_per_character"):
        SpokenAnswerBudget(units_per_character=0.0)


def test_too_short_audio_is_refused(inference: MostInference) -> None:
    with pytest.raises(InferenceError, match="too short"):
        inference.transcribe([torch.zeros(inference.min_input_samples - 1)])


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="missing.ckpt does not exist"):
        MostInference.from_checkpoint(tmp_path / "missing.ckpt")


def test_checkpoint_without_audio_io_says_how_to_fix_it(trained_run: TrainedRun, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)
    audio_io = checkpoint.pop("audio_io")
    stripped = tmp_path / "no_audio_io.ckpt"
    torch.save(checkpoint, stripped)
    with pytest.raises(InferenceError, match=r"no_audio_io.ckpt has no audio_io.*--audio_io"):
        MostInference.from_checkpoint(stripped)
    assert MostInference.from_checkpoint(stripped, audio_io=audio_io).audio_io.num_units == trained_run.num_units


def test_moved_unit_quantizer_names_the_path_and_the_option(trained_run: TrainedRun, tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match=r"gone.safetensors.*does not exist.*--unit_quantizer"):
        MostInference.from_checkpoint(trained_run.checkpoint, unit_quantizer=tmp_path / "gone.safetensors")


def test_a_checkpoint_with_the_flat_settings_of_before_the_config_groups_loads_with_them(
    inference: MostInference, trained_run: TrainedRun, waveforms: list[torch.Tensor], tmp_path: Path
) -> None:
    """Checkpoints saved before `ctc` / `transcript_positions` / `asr_decoding` (flat `asr_*` / `ctc_*` keys, the data's
    feature width and unit count in `backbone_overrides`) load with the same settings and decode the same."""
    checkpoint = torch.load(trained_run.checkpoint, map_location="cpu", weights_only=False)
    grouped = checkpoint["hyper_parameters"]
    flat = {k: v for k, v in grouped.items() if k not in ("ctc", "transcript_positions", "asr_decoding")}
    for old, (group, name) in LEGACY_HPARAMS.items():
        flat[old] = grouped[group][name]
    flat["backbone_overrides"] = {**grouped["backbone_overrides"], "audio_feature_dim": flat.pop("audio_feature_dim"),
                                  "num_audio_units": flat.pop("num_audio_units")}
    checkpoint["hyper_parameters"] = flat
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = MostInference.from_checkpoint(tmp_path / "old.ckpt")
    assert old.module.asr_decoding == inference.module.asr_decoding and old.module.ctc == inference.module.ctc
    assert old.module.transcript_positions == inference.module.transcript_positions
    assert old.module.config == inference.module.config
    assert old.transcribe(waveforms) == inference.transcribe(waveforms)

"""audio_scaled transcript positions: where each token sits, decoding uses the same positions as training,
cached generation matches uncached, and the stage module estimates lengths from its CTC head."""

from __future__ import annotations

import pytest
import torch

from lightning_most.backbone import MoSTBackbone
from lightning_most.config import build_config
from lightning_most.decoding import ASRDecodingConfig, Decoder
from lightning_most.decoding.generation import generate, prompts_from_batch
from lightning_most.layouts import asr_example, collate, text_lm_example
from lightning_most.positions import TranscriptPositionsConfig, audio_scaled_positions, decoding_positions
from lightning_most.stages import CTCConfig, Stage1Module
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

TOK = ByteTokenizer()
SPECIALS = SpecialTokens(TOK.base_vocab_size)
ENCODER = {"num_conv_layers": 1, "num_layers": 1, "ctc_head": True}


def _batch(cfg, texts=("hello world", "good day"), frames=(24, 9)) -> dict:
    g = torch.Generator().manual_seed(0)
    examples = [
        asr_example(TOK.encode(t), SPECIALS, cfg.text_vocab_size, features=torch.randn(n, cfg.audio_feature_dim, generator=g))
        for t, n in zip(texts, frames)
    ]
    return collate(examples + [text_lm_example(TOK.encode("no audio"), SPECIALS)], SPECIALS.pad)


def test_transcript_tokens_are_spread_over_the_frames() -> None:
    cfg = build_config("tiny")
    batch = _batch(cfg)
    is_asr = batch["task_ids"] == 0
    lengths = torch.tensor([11.0, 8.0, 0.0])  # len("hello world"), len("good day")
    pos = audio_scaled_positions(batch["attention_mask"], batch["feature_mask"], is_asr, lengths)
    # Row 0: |bos| |audio_start| 24 frames |audio_end| at 0..26, then <asr> t_0 .. t_10 <eos> at 2 + (k + 0.5) r.
    rate = 24 / 12
    assert pos[0, :27].tolist() == list(range(27))
    expected = [2 + (k + 0.5) * rate for k in range(13)]
    torch.testing.assert_close(pos[0, 27:40], torch.tensor(expected))
    assert pos[0, 38].item() == pytest.approx(2 + 11.5 * rate)  # the query of <eos>: the last frame's neighbourhood
    # The text-LM row keeps consecutive positions.
    n = int(batch["attention_mask"][2].sum())
    assert pos[2, :n].tolist() == list(range(n))


def test_decoding_positions_are_the_training_positions_of_the_same_sequence() -> None:
    cfg = build_config("tiny")
    batch = _batch(cfg)
    asr = {k: v[:2] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
    asr["audio_features"] = batch["audio_features"]
    lengths = torch.tensor([11.0, 8.0])
    full = audio_scaled_positions(asr["attention_mask"], asr["feature_mask"], torch.ones(2, dtype=torch.bool), lengths)
    prompt = prompts_from_batch(asr, SPECIALS.pad)  # left-padded: the rows' prompts end in the last column
    prompt_pos, start, step = decoding_positions(prompt, torch.ones(2, dtype=torch.bool), lengths)
    for i, n in enumerate(asr["prompt_lengths"].tolist()):
        torch.testing.assert_close(prompt_pos[i, -n:], full[i, :n])
        real = int(asr["attention_mask"][i].sum())
        generated = start[i] + torch.arange(real - n) * step[i]  # what generate gives t_0, t_1, ... <eos>
        torch.testing.assert_close(generated, full[i, n:real])


def test_cached_generation_with_scaled_positions_matches_uncached() -> None:
    model = MoSTBackbone(build_config("tiny", {"num_audio_units": 32, "audio_encoder": ENCODER})).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2) if p.dim() > 1 else None
    batch = _batch(model.config)
    asr = {k: v[:2] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
    asr["audio_features"] = batch["audio_features"]
    prompt = prompts_from_batch(asr, SPECIALS.pad)
    positions = decoding_positions(prompt, torch.ones(2, dtype=torch.bool), torch.tensor([11.0, 8.0]))
    cached = generate(model, prompt, 10, positions=positions, use_cache=True)
    assert torch.equal(cached, generate(model, prompt, 10, positions=positions, use_cache=False))
    assert not torch.equal(cached, generate(model, prompt, 10))  # the positions reach the attention


def test_stage_module_scales_by_true_lengths_in_training_and_ctc_lengths_in_decoding(monkeypatch) -> None:
    module = Stage1Module(backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER}, ctc=CTCConfig(weight=1.0),
                          transcript_positions=TranscriptPositionsConfig("audio_scaled", length_jitter=0.0),
                          asr_decoding=ASRDecodingConfig(max_new_tokens=6))
    module.configure_model()
    batch = _batch(module.config)
    expected = audio_scaled_positions(batch["attention_mask"], batch["feature_mask"], batch["task_ids"] == 0,
                                      torch.tensor([11.0, 8.0, 0.0]))
    torch.testing.assert_close(module._positions(batch), expected)
    # Jitter is drawn from the step, so a resumed run sees the same positions.
    module.transcript_positions.length_jitter = 0.2
    module.train()
    first, again = module._positions(batch), module._positions(batch)
    assert torch.equal(first, again) and not torch.equal(first, expected)
    # Decoding estimates L from the greedy CTC transcript.
    seen = {}
    real = Decoder._prompt_ctc

    def spy(decoder, prompt):
        seen["ctc"] = real(decoder, prompt)
        return seen["ctc"]

    monkeypatch.setattr(Decoder, "_prompt_ctc", spy)
    asr = {k: v[:2] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
    asr["audio_features"] = batch["audio_features"]
    assert len(module.decoder.transcribe(asr)) == 2 and seen["ctc"][1].tolist() == [24, 9]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="needs the CTC head"):
        Stage1Module(transcript_positions=TranscriptPositionsConfig("audio_scaled"))
    with pytest.raises(ValueError, match="transcript_positions.kind='diagonal'"):
        TranscriptPositionsConfig("diagonal")
    with pytest.raises(ValueError, match="transcript_positions.length_jitter"):
        TranscriptPositionsConfig(length_jitter=1.5)


def test_spoken_questions_are_answered_without_the_ctc_head(monkeypatch) -> None:
    from lightning_most.layouts import speech_instruct_example

    module = Stage1Module(backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER}, ctc=CTCConfig(weight=1.0),
                          transcript_positions=TranscriptPositionsConfig("audio_scaled"),
                          asr_decoding=ASRDecodingConfig(max_new_tokens=4, ctc_weight=0.5))
    module.configure_model()
    V = module.config.text_vocab_size
    question = speech_instruct_example([], SPECIALS, V, features=torch.randn(9, module.config.audio_feature_dim))
    monkeypatch.setattr(Decoder, "_prompt_ctc", lambda decoder, prompt: pytest.fail("the answer was shaped by the CTC head"))
    assert len(module.decoder.transcribe(collate([question], SPECIALS.pad))) == 1
    asr = asr_example([], SPECIALS, V, features=torch.randn(9, module.config.audio_feature_dim))
    with pytest.raises(ValueError, match="not a mix"):
        module.decoder.transcribe(collate([question, asr], SPECIALS.pad))


# ---- text_scaled TTS units -------------------------------------------------------------------


def _tts_batch(cfg, texts=("hello world", "hi"), units=(19, 5)) -> dict:
    from lightning_most.layouts import tts_example

    examples = [tts_example(TOK.encode(t), torch.arange(m) % 7, SPECIALS, cfg.text_vocab_size) for t, m in zip(texts, units)]
    return collate(examples + [text_lm_example(TOK.encode("no audio"), SPECIALS)], SPECIALS.pad)


def test_tts_units_are_spread_over_the_text() -> None:
    from lightning_most.positions import UnitPositionsConfig, teacher_forced_positions

    cfg = build_config("tiny")
    batch = _tts_batch(cfg)
    pos = teacher_forced_positions(batch, TranscriptPositionsConfig(), None, UnitPositionsConfig("text_scaled"),
                                   SPECIALS.audio_start)
    # Row 0: |bos| |tts| 11 text tokens at 0..12, then <audio_start> U_0 .. U_18 <audio_end> at 2 + (k + 0.5) * 11 / 20.
    assert pos[0, :13].tolist() == list(range(13))
    step = 11 / 20
    torch.testing.assert_close(pos[0, 13:34], torch.tensor([2 + (k + 0.5) * step for k in range(21)]))
    assert pos[0, 32].item() == pytest.approx(2 + 19.5 * step)  # the query of <audio_end> lies on the last character
    torch.testing.assert_close(pos[1, 4:11], torch.tensor([2 + (k + 0.5) * 2 / 6 for k in range(7)]))
    n = int(batch["attention_mask"][2].sum())
    assert pos[2, :n].tolist() == list(range(n))  # text-LM row: consecutive
    # Sequential (MoST's default) leaves every position consecutive.
    assert teacher_forced_positions(batch, TranscriptPositionsConfig(), 0, UnitPositionsConfig(), SPECIALS.audio_start) is None


def test_unit_decoding_positions_are_the_training_positions_of_the_same_sequence() -> None:
    from lightning_most.positions import UnitPositionsConfig, teacher_forced_positions, unit_decoding_positions

    cfg = build_config("tiny")
    batch = _tts_batch(cfg, texts=("hello world", "good day"), units=(22, 16))  # both 2 units per text token
    tts = {k: v[:2] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
    full = teacher_forced_positions(tts, TranscriptPositionsConfig(), None, UnitPositionsConfig("text_scaled"),
                                    SPECIALS.audio_start)
    prompt = prompts_from_batch(tts, SPECIALS.pad)
    prompt_pos, start, step = unit_decoding_positions(prompt, 2.0, SPECIALS.audio_start)
    for i, n in enumerate(tts["prompt_lengths"].tolist()):
        torch.testing.assert_close(prompt_pos[i, -n:], full[i, :n])
        real = int(tts["attention_mask"][i].sum())
        generated = start[i] + torch.arange(real - n) * step[i]  # what generate gives U_0, U_1, ... <audio_end>
        torch.testing.assert_close(generated, full[i, n:real])


def test_stage_module_counts_the_unit_rate_and_speaks_at_text_scaled_positions(monkeypatch) -> None:
    from lightning_most.positions import UnitPositionsConfig

    module = Stage1Module(backbone_overrides={"num_audio_units": 32},
                          unit_positions=UnitPositionsConfig("text_scaled", length_jitter=0.0))
    module.configure_model()
    batch = _tts_batch(module.config)
    assert module.units_per_token == 3.0  # nothing counted yet: the default rate
    monkeypatch.setattr(Stage1Module, "log", lambda *args, **kwargs: None)  # no trainer to log to
    monkeypatch.setattr(Stage1Module, "_log_throughput", lambda *args: None)
    module.training_step(batch, 0)
    assert module.tts_counts == [24.0, 13.0] and module.units_per_token == pytest.approx(24 / 13)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    restored = Stage1Module(backbone_overrides={"num_audio_units": 32}, unit_positions=UnitPositionsConfig("text_scaled"))
    restored.on_load_checkpoint(checkpoint)
    assert restored.units_per_token == pytest.approx(24 / 13)
    assert Stage1Module(unit_positions=UnitPositionsConfig("text_scaled", units_per_token=2.5)).units_per_token == 2.5
    # The decoder speaks at those positions: the units differ from consecutive positions' (random weights, greedy).
    for p in module.backbone.parameters():
        p.data.normal_(0, 0.2) if p.dim() > 1 else None
    tts = {k: v[:2] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}  # the TTS prompts
    scaled = module.decoder.units(tts, 12, 32)
    assert module.decoder.units_per_token == pytest.approx(24 / 13)
    module.unit_positions = UnitPositionsConfig()
    assert module.decoder.units_per_token is None
    assert any(not torch.equal(a, b) for a, b in zip(scaled, module.decoder.units(tts, 12, 32)))


def test_bad_unit_positions_are_refused() -> None:
    from lightning_most.positions import UnitPositionsConfig

    with pytest.raises(ValueError, match="unit_positions.kind='audio_scaled'"):
        UnitPositionsConfig("audio_scaled")
    with pytest.raises(ValueError, match="unit_positions.length_jitter"):
        UnitPositionsConfig(length_jitter=-0.1)
    with pytest.raises(ValueError, match="unit_positions.units_per_token"):
        UnitPositionsConfig(units_per_token=0.0)


def test_tts_input_dropout_hides_some_input_units_but_no_target(monkeypatch) -> None:
    module = Stage1Module(backbone_overrides={"num_audio_units": 32}, tts_input_dropout=0.5)
    module.configure_model()
    batch = _tts_batch(module.config, units=(200, 100))
    dropped = module._drop_tts_inputs(batch)
    V = module.config.text_vocab_size
    changed = dropped["input_ids"] != batch["input_ids"]  # (B, T)
    assert bool((dropped["input_ids"][changed] == SPECIALS.pad).all())
    assert bool((batch["input_ids"][changed] >= V).all())  # only units: never text, <audio_start> or <audio_end>
    assert not bool(changed[2].any())  # the text-LM row is untouched
    share = changed.sum() / (batch["input_ids"] >= V).sum()
    assert 0.4 < float(share) < 0.6
    assert torch.equal(dropped["labels"], batch["labels"]) and torch.equal(dropped["modality_ids"], batch["modality_ids"])
    assert torch.equal(module._drop_tts_inputs(batch)["input_ids"], dropped["input_ids"])  # drawn from the step
    # The training step sees the dropped inputs.
    class Seen(Exception):
        pass

    def forward(self, b):
        raise Seen(b["input_ids"])

    monkeypatch.setattr(Stage1Module, "forward", forward)
    with pytest.raises(Seen) as seen:
        module.training_step(batch, 0)
    assert torch.equal(seen.value.args[0], dropped["input_ids"])
    with pytest.raises(ValueError, match="tts_input_dropout"):
        Stage1Module(tts_input_dropout=1.0)

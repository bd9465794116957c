"""The optional bidirectional audio encoder and its CTC head: context stays within an utterance, padding
changes nothing, cached generation still matches uncached, and the CTC loss trains the encoder."""

from __future__ import annotations

import pytest
import torch

from lightning_most.backbone import MoSTBackbone
from lightning_most.bidirectional_encoder import BidirectionalAudioEncoder, pad_segments, unpad_segments
from lightning_most.config import AudioEncoderConfig, build_config
from lightning_most.decoding import ASRDecodingConfig
from lightning_most.decoding.generation import generate, prompts_from_batch
from lightning_most.layouts import asr_example, collate, text_lm_example
from lightning_most.stages import CTCConfig, Stage1Module
from lightning_most.tokenizer import ByteTokenizer, SpecialTokens

TOK = ByteTokenizer()
SPECIALS = SpecialTokens(TOK.base_vocab_size)
ENCODER = {"num_conv_layers": 2, "num_layers": 1, "ctc_head": True}


def _asr_batch(cfg, texts=("hello world", "good day to you"), frames=(12, 17), seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    examples = [
        asr_example(TOK.encode(t), SPECIALS, cfg.text_vocab_size, features=torch.randn(n, cfg.audio_feature_dim, generator=g))
        for t, n in zip(texts, frames)
    ]
    return collate(examples + [text_lm_example(TOK.encode("no audio here"), SPECIALS)], SPECIALS.pad)


def _forward(model, batch):
    return model(batch["input_ids"], batch["modality_ids"], batch["attention_mask"],
                 batch.get("audio_features"), batch["feature_mask"])


def test_pad_and_unpad_segments_round_trip() -> None:
    frames = torch.randn(9, 3)
    counts = torch.tensor([4, 2, 3])
    padded, is_pad = pad_segments(frames, counts)
    assert padded.shape == (3, 4, 3)
    assert is_pad.sum(dim=1).tolist() == [0, 2, 1]
    torch.testing.assert_close(unpad_segments(padded, is_pad), frames)


def test_encoder_context_is_bidirectional_within_a_segment_and_stops_at_its_edges() -> None:
    encoder = BidirectionalAudioEncoder(16, AudioEncoderConfig(num_conv_layers=2, num_layers=1)).eval()
    frames = torch.randn(10, 16)
    counts = torch.tensor([6, 4])
    base, _ = encoder(frames, counts)
    changed = frames.clone()
    changed[5] = torch.randn(16)  # the last frame of segment 0
    out, _ = encoder(changed, counts)
    assert not torch.allclose(out[0], base[0])  # earlier frames of the same segment see it
    torch.testing.assert_close(out[6:], base[6:])  # the other segment does not


def test_input_dropout_acts_in_training_only_and_is_validated() -> None:
    torch.manual_seed(0)
    encoder = BidirectionalAudioEncoder(16, AudioEncoderConfig(num_layers=1, input_dropout=0.5))
    frames, counts = torch.randn(10, 16), torch.tensor([6, 4])
    encoder.eval()
    first, _ = encoder(frames, counts)
    torch.testing.assert_close(encoder(frames, counts)[0], first)  # eval: deterministic
    encoder.train()
    assert not torch.allclose(encoder(frames, counts)[0], first)
    with pytest.raises(ValueError, match="input_dropout"):
        AudioEncoderConfig(num_layers=1, input_dropout=1.0)


def test_padding_a_batch_does_not_change_encoded_frames_or_logits() -> None:
    model = MoSTBackbone(build_config("tiny", {"num_audio_units": 32, "audio_encoder": ENCODER})).eval()
    batch = _asr_batch(model.config)
    together = _forward(model, batch)
    alone = _forward(model, _asr_batch(model.config, texts=("hello world",), frames=(12,)))
    n = int(_asr_batch(model.config, texts=("hello world",), frames=(12,))["attention_mask"][0].sum())
    torch.testing.assert_close(together.logits[0, :n], alone.logits[0, :n], atol=1e-5, rtol=1e-4)
    assert together.ctc_logits.shape[:2] == (2, 17) and together.ctc_lengths.tolist() == [12, 17]
    assert together.ctc_logits.shape[-1] == model.config.text_vocab_size + 1


def test_generation_with_an_encoder_matches_uncached() -> None:
    model = MoSTBackbone(build_config("tiny", {"num_audio_units": 32, "audio_encoder": ENCODER})).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2) if p.dim() > 1 else None
    prompt = prompts_from_batch(_asr_batch(model.config), SPECIALS.pad)  # left-padded prompts
    assert torch.equal(generate(model, prompt, 10, use_cache=True), generate(model, prompt, 10, use_cache=False))


def test_ctc_loss_trains_the_encoder_on_asr_rows() -> None:
    torch.manual_seed(0)
    module = Stage1Module(backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER}, ctc=CTCConfig(weight=1.0))
    module.configure_model()
    batch = _asr_batch(module.config, frames=(24, 30))
    opt = torch.optim.AdamW(module.backbone.parameters(), lr=5e-3)
    losses = []
    for _ in range(120):
        out = _forward(module.backbone, batch)
        ctc = module._ctc_loss(batch, out.ctc_logits, out.ctc_lengths)
        losses.append(ctc.item())
        ctc.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.2 * losses[0], f"ctc {losses[0]:.3f} -> {losses[-1]:.3f}"
    # Greedy CTC decoding of the overfit batch now spells the first transcript.
    out = _forward(module.backbone, batch)
    best = out.ctc_logits[0, : out.ctc_lengths[0]].argmax(-1)
    spelled = [t for t in torch.unique_consecutive(best).tolist() if t != module.config.text_vocab_size]
    assert TOK.decode(spelled) == "hello world"


def test_ctc_weight_without_a_ctc_head_is_refused() -> None:
    with pytest.raises(ValueError, match="audio_encoder.ctc_head"):
        Stage1Module(ctc=CTCConfig(weight=0.5))
    with pytest.raises(ValueError, match="needs an encoder"):
        build_config("tiny", {"audio_encoder": {"ctc_head": True}})
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        build_config("tiny", {"audio_encoder": {"num_conv_layers": 1, "kernel_size": 4}})


class _AlwaysA(torch.nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = h.new_zeros(*h.shape[:-1], self.vocab)
        logits[..., ord("A")] = 10.0
        return logits


def test_transcripts_are_capped_at_tokens_per_frame() -> None:
    torch.manual_seed(0)
    module = Stage1Module(backbone_overrides={"num_audio_units": 32},
                          asr_decoding=ASRDecodingConfig(max_new_tokens=40, max_tokens_per_frame=0.25))
    module.configure_model()
    batch = _asr_batch(module.config, frames=(8, 20))
    asr = {k: v[:2] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
    asr["audio_features"] = batch["audio_features"]  # rows 0 and 1 hold all the frames
    module.backbone.text_head = _AlwaysA(module.config.text_vocab_size)  # a decoder that never stops
    hyps = module.decoder.transcribe(asr)
    assert [len(h) for h in hyps] == [2, 5]  # ceil(0.25 x 8), ceil(0.25 x 20)
    module.asr_decoding.max_tokens_per_frame = None
    assert [len(h) for h in module.decoder.transcribe(asr)] == [40, 40]


def test_ctc_warmup_steps_train_the_encoder_alone_then_everything() -> None:
    torch.manual_seed(0)
    module = Stage1Module(backbone_overrides={"num_audio_units": 32, "audio_encoder": ENCODER},
                          ctc=CTCConfig(weight=1.0, warmup_steps=1))
    module.configure_model()
    batch = _asr_batch(module.config, frames=(24, 30))
    module.log = lambda *args, **kwargs: None  # no trainer attached

    class _Trainer:
        global_step = 0
        world_size = 1
        datamodule = None

    module._trainer = _Trainer()
    opt = torch.optim.AdamW(module.backbone.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    module.training_step(batch, 0).backward()
    opt.step()
    opt.zero_grad()
    changed = {k for k, v in module.backbone.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("audio_projector.", "audio_encoder.", "ctc_head.")) for k in changed)
    _Trainer.global_step = 1  # warmup over: the decoder trains too
    module.training_step(batch, 0).backward()
    opt.step()
    assert not torch.equal(module.backbone.layers[0].self_attn.o_proj.weight, before["layers.0.self_attn.o_proj.weight"])
    with pytest.raises(ValueError, match="set ctc.weight > 0"):
        CTCConfig(warmup_steps=5)

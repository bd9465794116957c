"""Autoregressive decoding from a prompt, with or without the KV cache.

Prompts are left-padded (B, T) so that every sequence's next position is the last column. Each
generated id takes the modality of its range: ids >= text_vocab_size are audio units (modality 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_most.attention import KVCache
from lightning_most.backbone import MoSTBackbone
from lightning_most.batch import Modality


def prompts_from_batch(batch: dict, pad_id: int) -> dict:
    """Cut each example of a collated batch to its prompt (`prompt_lengths`) and left-pad the result."""
    lengths = batch["prompt_lengths"].tolist()
    B, T = len(lengths), max(lengths)
    out = {
        "input_ids": torch.full((B, T), pad_id, dtype=torch.long),
        "modality_ids": torch.zeros((B, T), dtype=torch.long),
        "feature_mask": torch.zeros((B, T), dtype=torch.bool),
        "attention_mask": torch.zeros((B, T), dtype=torch.bool),
    }
    for i, n in enumerate(lengths):
        if bool(batch["feature_mask"][i, n:].any()):
            raise ValueError(f"example {i} has audio frames after its prompt; they cannot be kept")
        for key in ("input_ids", "modality_ids", "feature_mask", "attention_mask"):
            out[key][i, T - n :] = batch[key][i, :n]
    # Frames keep their row-major order: the examples' order and each prompt's frame order are unchanged.
    if "audio_features" in batch:
        out["audio_features"] = batch["audio_features"]
    return {k: v.to(batch["input_ids"].device) if isinstance(v, Tensor) else v for k, v in out.items()}


@torch.no_grad()
def generate(
    model: MoSTBackbone,
    prompt: dict,
    max_new_tokens: int,
    allowed_ids: Tensor | None = None,
    stop_ids: tuple[int, ...] = (),
    temperature: float = 0.0,
    top_k: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    positions: tuple[Tensor, Tensor, Tensor] | None = None,
    rescorer: Any | None = None,
) -> Tensor:
    """Decode up to `max_new_tokens` ids after a left-padded prompt.

    Args:
        model: the backbone (put in eval mode by the caller).
        prompt: `input_ids`, `modality_ids`, `attention_mask` (B, T), optional `audio_features`/`feature_mask`.
        max_new_tokens: decoding steps.
        allowed_ids: (V,) bool, ids that may be generated (e.g. text only for ASR, units + <audio_end> for TTS).
        stop_ids: a sequence ends after emitting one of these (it is kept in the output).
        temperature: 0 = greedy; otherwise sample from softmax(logits / temperature).
        top_k: sample only among the k most likely ids.
        use_cache: reuse keys/values of earlier positions (False recomputes the whole sequence each step).
        generator: RNG for sampling.
        positions: (prompt positions (B, T), start (B,), step (B,)): RoPE positions of the prompt, and generated
            id t sits at start + t * step (`positions.decoding_positions`); None = consecutive positions.
        rescorer: turns each step's logits (B, V) into the scores ids are picked by, and is told the picked ids
            (`rescorer.advance(ids)`), e.g. `ctc_prefix.JointCTCRescorer`.

    Returns:
        (B, max_new_tokens) generated ids; positions after a sequence stopped hold -1.
    """
    B = prompt["input_ids"].shape[0]
    device = prompt["input_ids"].device
    text_vocab = model.config.text_vocab_size
    cache = KVCache(len(model.layers), capacity=prompt["input_ids"].shape[1] + max_new_tokens) if use_cache else None
    out = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)

    full = dict(prompt)  # the whole sequence so far
    if positions is not None:
        full["position_ids"], start, stride = positions
    step = full  # what the next forward pass is fed: everything without a cache, the new position with one
    for t in range(max_new_tokens):
        logits = model(
            step["input_ids"], step["modality_ids"], full["attention_mask"],
            step.get("audio_features"), step.get("feature_mask"), cache=cache, position_ids=step.get("position_ids"),
        ).logits[:, -1]  # (B, V)
        if rescorer is not None:
            logits = rescorer(logits)
        next_id = _pick(logits.float(), allowed_ids, temperature, top_k, generator)  # (B,)
        if rescorer is not None:
            rescorer.advance(next_id)
        out[:, t] = torch.where(done, -1, next_id)
        done = done | torch.isin(next_id, stop)
        if bool(done.all()):
            break
        new = {
            "input_ids": next_id[:, None],
            "modality_ids": torch.where(next_id >= text_vocab, Modality.AUDIO, Modality.TEXT)[:, None],
            "feature_mask": torch.zeros(B, 1, dtype=torch.bool, device=device),
            "attention_mask": torch.ones(B, 1, dtype=torch.bool, device=device),
        }
        if positions is not None:
            new["position_ids"] = (start + t * stride)[:, None].to(full["position_ids"].dtype)
        full = {**full, **{k: torch.cat([full[k], v], dim=1) for k, v in new.items() if k in full}}
        step = new if use_cache else full
    return out


def _pick(logits: Tensor, allowed: Tensor | None, temperature: float, top_k: int | None, generator) -> Tensor:
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)

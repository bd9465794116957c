"""Beam search over the backbone's next-token scores, optionally joint with CTC prefix scores.

Greedy joint CTC / attention decoding (`ctc_prefix.JointCTCRescorer` in `generation.generate`) commits
to one token per step; a misspelt first letter can then only be followed by more misspelling. Beam
search keeps the `beam_size` best prefixes of every example by their summed joint score

    score(h) = sum over steps of (1 - w) log p_dec(c | prefix) + w (log psi(prefix + c) - log psi(prefix))

(w = 0: the decoder alone), the rule of Watanabe et al. (2017) and ESPnet's `BeamSearch`. Every step's
score is <= 0 (psi(h) sums psi(h + c) over c and <eos>), so a prefix's score only falls as it grows:
an example is finished once its best ended hypothesis scores at least its best live prefix. A word LM
(`word_lm.WordLMFusion`, shallow fusion) adds `lambda log P_lm` of the words being written, and a
bonus per word; those steps can be positive, and the same stopping rule is then a heuristic.

The prompts are run once (B rows); their KV cache is then repeated `beam_size` times (rows b * K ..
b * K + K - 1), and after each step the live prefixes are reordered inside their example's rows, the KV
cache and the CTC and word-LM states with them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_most.attention import KVCache
from lightning_most.backbone import MoSTBackbone
from lightning_most.batch import Modality
from lightning_most.decoding.ctc_prefix import JointCTCRescorer
from lightning_most.decoding.word_lm import WordLMFusion

NEG_INF = float("-inf")


@torch.no_grad()
def beam_search(
    model: MoSTBackbone,
    prompt: dict,
    max_new_tokens: int,
    beam_size: int,
    allowed_ids: Tensor,
    eos: int,
    max_lengths: Tensor | None = None,
    positions: tuple[Tensor, Tensor, Tensor] | None = None,
    rescorer: JointCTCRescorer | None = None,
    word_lm: WordLMFusion | None = None,
) -> list[list[int]]:
    """The best-scoring id sequence (without <eos>) of each prompt row.

    Args:
        model: the backbone (put in eval mode by the caller).
        prompt: a left-padded prompt of B rows (`generation.prompts_from_batch`).
        max_new_tokens: decoding steps.
        beam_size: K live prefixes per example.
        allowed_ids: (V,) bool, ids that may be generated; `eos` must be one of them.
        eos: the id that ends a hypothesis.
        max_lengths: (B,) a hypothesis that reaches its example's length ends there (None: max_new_tokens).
        positions: as in `generation.generate`, for the B rows (repeated here).
        rescorer: a `JointCTCRescorer` over B * K rows (`CTCPrefixScorer(..., rows_per_example=K)`), or None
            for the decoder's scores alone.
        word_lm: a `WordLMFusion` over the B * K rows whose scores are added to each step's (shallow fusion),
            or None. Its word-end scores can be positive, so the early stop below becomes a heuristic.

    Returns:
        B lists of ids.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not bool(allowed_ids[eos]):
        raise ValueError("beam_search needs eos among the allowed ids")
    B, K = prompt["input_ids"].shape[0], beam_size
    device = prompt["input_ids"].device
    text_vocab = model.config.text_vocab_size
    if max_lengths is None:
        max_lengths = torch.full((B,), max_new_tokens, device=device)
    max_lengths = max_lengths.clamp(1, max_new_tokens).to(device)
    if positions is not None:
        start, stride = (p.repeat_interleave(K, dim=0) for p in positions[1:])
    P = prompt["input_ids"].shape[1]
    cache = KVCache(len(model.layers), capacity=P + max_new_tokens)
    # The prompts once: (B, V) logits, and the cache of their B rows, repeated K times below.
    logits = model(
        prompt["input_ids"], prompt["modality_ids"], prompt["attention_mask"], prompt.get("audio_features"),
        prompt.get("feature_mask"), cache=cache, position_ids=None if positions is None else positions[0],
    ).logits[:, -1].repeat_interleave(K, dim=0)  # (B*K, V)
    cache.reorder(torch.arange(B, device=device).repeat_interleave(K))
    # (B*K, P + max_new_tokens): the prompts' padding, then the generated positions; step t reads P + t columns
    full_mask = torch.ones(B * K, P + max_new_tokens, dtype=torch.bool, device=device)
    full_mask[:, :P] = prompt["attention_mask"].repeat_interleave(K, dim=0)
    # Only the first copy of each example is live at the start, so the first step does not pick K equal prefixes.
    scores = torch.full((B, K), NEG_INF, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    base = (torch.arange(B, device=device) * K)[:, None]  # (B, 1) first row of each example
    forbidden = ~allowed_ids.to(device)  # (V,)
    step: dict[str, Tensor] = {}  # the inputs of the next step, made at the end of each one
    for t in range(max_new_tokens):
        if t > 0:
            logits = model(
                step["input_ids"], step["modality_ids"], full_mask[:, : P + t], None, step["feature_mask"], cache=cache,
                position_ids=step.get("position_ids"),
            ).logits[:, -1]  # (B*K, V)
        # Joint scores; CTC sums that may have underflowed hold upper bounds (rescorer.doubtful), made exact
        # below only where they could enter the beam.
        joint = rescorer(logits, exact=False).double() if rescorer is not None else logits.double().log_softmax(dim=-1)
        lm_scores = word_lm.scores() if word_lm is not None else None  # (B*K, V)
        if lm_scores is not None:
            joint = joint + lm_scores
        joint = joint.masked_fill(forbidden, NEG_INF)
        V = joint.shape[-1]
        total = (scores.view(-1, 1) + joint).view(B, K * V)  # (B, K*V)
        if rescorer is not None:
            _refine_doubtful(total, rescorer, scores, lm_scores, 2 * K)
        top_scores, top_index = total.topk(2 * K, dim=1)  # (B, 2K): room for K live ones after the ended
        new_scores = torch.full((B, K), NEG_INF, dtype=torch.float64, device=device)
        new_parent = torch.zeros(B, K, dtype=torch.long, device=device)
        new_token = torch.zeros(B, K, dtype=torch.long, device=device)
        length = t + 1
        for b in range(B):
            if bool(done[b]):
                continue
            live = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                parent, token = divmod(index, V)
                if score == NEG_INF or live == K:
                    break
                row = b * K + parent
                if token == eos:
                    finished[b].append((score, tokens[row].tolist()))
                elif length >= int(max_lengths[b]):  # the length cap ends it with this token
                    finished[b].append((score, tokens[row].tolist() + [token]))
                else:
                    new_scores[b, live], new_parent[b, live], new_token[b, live] = score, parent, token
                    live += 1
            best_live = float(new_scores[b].max())
            if finished[b] and max(s for s, _ in finished[b]) >= best_live:
                done[b] = True
        if bool(done.all()):
            break
        new_scores[done] = NEG_INF
        rows = (base + new_parent).flatten()  # (B*K,) parent row of each new prefix
        next_id = new_token.flatten()
        scores = new_scores
        tokens = torch.cat([tokens.index_select(0, rows), next_id[:, None]], dim=1)
        cache.reorder(rows, shared_positions=P)  # the prompt's positions are the same in all rows of an example
        if rescorer is not None:
            rescorer.reorder(rows)
            rescorer.advance(next_id)
        if word_lm is not None:
            word_lm.reorder(rows)
            word_lm.advance(next_id)
        # Rows move only inside their example, whose copies share the prompt, its mask and its positions:
        # only the cache, the prefixes and the CTC and word-LM states need reordering.
        step = {
            "input_ids": next_id[:, None],
            "modality_ids": torch.where(next_id >= text_vocab, Modality.AUDIO, Modality.TEXT)[:, None],
            "feature_mask": torch.zeros(B * K, 1, dtype=torch.bool, device=device),
        }
        if positions is not None:
            step["position_ids"] = (start + t * stride)[:, None].to(positions[0].dtype)
    out = []
    for b in range(B):
        if not finished[b]:  # the step budget ran out first: the best live prefix
            k = int(scores[b].argmax())
            finished[b].append((float(scores[b, k]), tokens[b * K + k].tolist()))
        out.append(max(finished[b], key=lambda item: item[0])[1])
    return out


def _refine_doubtful(total: Tensor, rescorer: JointCTCRescorer, scores: Tensor, lm_scores: Tensor | None, n: int) -> None:
    """Make exact, in `total` (B, K*V), the bounded candidates that could be among each example's n best.

    A bound >= the true score, so a candidate whose bound is below the n-th best exact candidate of its example
    has n exact candidates above it and cannot be among the n best: only the others are summed directly.
    """
    B, KV = total.shape
    V = rescorer.doubtful.shape[1]
    doubtful = rescorer.doubtful.view(B, KV) & torch.isfinite(total)  # (B, K*V); forbidden ids are -inf
    if not bool(doubtful.any()):
        return
    cutoff = total.masked_fill(doubtful, NEG_INF).topk(n, dim=1).values[:, -1:]  # (B, 1) n-th best exact
    b, j = (doubtful & (total >= cutoff)).nonzero(as_tuple=True)
    if b.numel():
        rows, ids = b * (KV // V) + j // V, j % V
        joint = rescorer.refine(rows, ids).double()
        if lm_scores is not None:
            joint = joint + lm_scores[rows, ids]
        total[b, j] = scores.view(-1)[rows] + joint

"""The ASR decoding of commit c3f8cb4, before the speed-up of issue 16: the reference the fast path must agree with.

Kept verbatim but for names (`Reference...`) and `reference_asr_ids`, which is `Decoder._asr_ids` of that commit
with `self` as the `decoder` argument; its KV cache (grown by `torch.cat`, reordered by `index_select`) is copied
here too. `reference_transcribe` decodes a batch with it; tests/test_decoding_speed.py
checks that `Decoder.transcribe` gives the same transcripts, and bench/decoding_rtf.py times both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_most.attention import MultiHeadLatentAttention, set_cache_latent
from lightning_most.backbone import MoSTBackbone
from lightning_most.batch import TASKS, Modality
from lightning_most.decoding.decoder import Decoder, eval_mode, greedy_ctc_ids
from lightning_most.decoding.generation import generate, prompts_from_batch
from lightning_most.decoding.word_lm import (
    OOV,
    SENTENCE_END,
    LexiconTrie,
    WordLMConfig,
    WordNgramLM,
    byte_word_chars,
    counted_word_lm,
)
from lightning_most.positions import decoding_positions

NEG_INF = float("-inf")
PAD_LOG_PROB = -1.0e4


class ReferenceLayerCache:
    """One layer's cached tensors, grown along the time axis (dim 1 of (B, S, ...) tensors)."""

    def __init__(self) -> None:
        self.tensors: tuple[Tensor, ...] | None = None

    def update(self, *new: Tensor) -> tuple[Tensor, ...]:
        """Append this step's tensors (B, T, ...) and return the full ones (B, S, ...)."""
        full = new if self.tensors is None else tuple(torch.cat([o, n], dim=1) for o, n in zip(self.tensors, new))
        self.tensors = full
        return full


class ReferenceKVCache:
    """The per-layer caches of a decoder stack."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [ReferenceLayerCache() for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """Number of cached positions."""
        first = self.layers[0].tensors
        return 0 if first is None else first[0].shape[1]

    def reorder(self, index: Tensor) -> None:
        """Keep the cached rows `index` (new row i = old row index[i]) in every layer (beam search)."""
        for layer in self.layers:
            if layer.tensors is not None:
                layer.tensors = tuple(t.index_select(0, index) for t in layer.tensors)


def _log_scan(start: Tensor, inputs: Tensor, emit: Tensor) -> Tensor:
    """y[t] = logaddexp(y[t-1], inputs[t-1]) + emit[t], y[0] = start + emit[0], along dim 1 ((B, T) each but start (B,))."""
    # Unrolled: y[t] = S[t] + log(exp(start) + sum_{1<=s<=t} exp(inputs[s-1] - S[s-1])), S = cumsum(emit).
    cum = emit.cumsum(dim=1)  # (B, T)
    shifted = torch.cat([start[:, None], inputs[:, :-1] - cum[:, :-1]], dim=1)  # (B, T)
    return cum + torch.logcumsumexp(shifted, dim=1)


class ReferenceCTCPrefixScorer:
    """Prefix scores of a batch of CTC posteriors (see the module docstring).

    Args:
        log_probs: (B, T, V + 1) log-softmax of the CTC head, the blank at index `blank`.
        lengths: (B,) valid frames of each row.
        blank: the blank's index.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int) -> None:
        B, T, _ = log_probs.shape
        self.blank = blank
        valid = torch.arange(T, device=log_probs.device)[None] < lengths[:, None]  # (B, T)
        x = log_probs.double()
        # Past a row's end: blanks with probability 1, so the forward variables carry over unchanged
        # (a large finite penalty rather than -inf keeps the scans' cumulative sums finite).
        pad = torch.full_like(x, PAD_LOG_PROB)
        pad[..., blank] = 0.0
        self.x = torch.where(valid[..., None], x, pad)  # (B, T, V + 1)
        self.last_frame = (lengths - 1).clamp(min=0)
        self.r_n = torch.full((B, T), NEG_INF, dtype=torch.float64, device=x.device)
        self.r_b = self.x[..., blank].cumsum(dim=1)  # the empty prefix: blanks only
        self.last = torch.full((B,), -1, dtype=torch.long, device=x.device)  # last token of each prefix
        self.empty = torch.ones(B, dtype=torch.bool, device=x.device)
        self.score = torch.zeros(B, dtype=torch.float64, device=x.device)  # log psi(h)

    def extension_scores(self, num_tokens: int) -> Tensor:
        """(B, num_tokens) log psi(h + c) for the tokens c = 0..num_tokens-1 (text ids, no blank)."""
        tokens = torch.arange(num_tokens, device=self.x.device)
        is_last = tokens[None, None] == self.last[:, None, None]  # (B, 1, C)
        # After h, a new c may follow any frame; a repeat of h's last token only a blank.
        phi = torch.where(is_last, self.r_b[..., None], torch.logaddexp(self.r_n, self.r_b)[..., None])  # (B, T, C)
        emit = self.x[..., :num_tokens]  # (B, T, C)
        # c first emitted at frame t: phi[t-1] + x_t(c); at frame 0 only from the empty prefix.
        first = torch.where(self.empty[:, None], emit[:, 0], torch.full_like(emit[:, 0], NEG_INF))
        later = phi[:, :-1] + emit[:, 1:]  # (B, T-1, C)
        return torch.logsumexp(torch.cat([first[:, None], later], dim=1), dim=1)

    def end_scores(self) -> Tensor:
        """(B,) log psi(h + <eos>): the probability that the transcript is exactly h."""
        at_end = torch.logaddexp(self.r_n, self.r_b)  # (B, T)
        return at_end.gather(1, self.last_frame[:, None])[:, 0]

    def advance(self, tokens: Tensor, scores: Tensor) -> None:
        """Extend each row's prefix by `tokens` (B,) whose `extension_scores` were `scores` (B,)."""
        phi = torch.where((tokens == self.last)[:, None], self.r_b, torch.logaddexp(self.r_n, self.r_b))  # (B, T)
        emit = self.x.gather(2, tokens[:, None, None].expand(-1, self.x.shape[1], 1))[..., 0]  # (B, T)
        start = torch.where(self.empty, 0.0, NEG_INF).to(emit.dtype)
        r_n = _log_scan(start, phi, emit)
        blank = self.x[..., self.blank]
        r_b = _log_scan(torch.full_like(start, NEG_INF), r_n, blank)
        self.r_n, self.r_b = r_n, r_b
        self.last, self.score = tokens.clone(), scores.double()
        self.empty = torch.zeros_like(self.empty)

    def reorder(self, index: Tensor) -> None:
        """Row i takes row index[i]'s prefix state (beam search); the posteriors of rows i and index[i] must be equal."""
        self.r_n, self.r_b = self.r_n.index_select(0, index), self.r_b.index_select(0, index)
        self.last, self.empty = self.last.index_select(0, index), self.empty.index_select(0, index)
        self.score = self.score.index_select(0, index)


class ReferenceJointCTCRescorer:
    """Greedy joint decoding for `generation.generate`: decoder log-probs mixed with CTC prefix scores.

    `__call__` turns the decoder's next-token logits (B, V) into joint scores over the same ids, -inf
    outside the text tokens 0..num_tokens-1 and <eos>; `advance` records the chosen ids.
    """

    def __init__(self, scorer: ReferenceCTCPrefixScorer, weight: float, num_tokens: int, eos: int) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"the CTC weight of joint decoding must lie in (0, 1], got {weight}")
        self.scorer, self.weight, self.num_tokens, self.eos = scorer, weight, num_tokens, eos
        self._extension: Tensor | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        C = self.num_tokens
        self._extension = self.scorer.extension_scores(C)  # (B, C)
        ctc = torch.full(logits.shape, NEG_INF, dtype=torch.float64, device=logits.device)
        ctc[:, :C] = self._extension
        ctc[:, self.eos] = self.scorer.end_scores()
        ctc = ctc - self.scorer.score[:, None]  # log psi(h + c) - log psi(h)
        decoder = logits.double().log_softmax(dim=-1)
        return ((1 - self.weight) * decoder + self.weight * ctc).to(logits.dtype)

    def reorder(self, index: Tensor) -> None:
        """Row i continues row index[i]'s prefix (beam search): the prefix state and this step's scores move with it."""
        self.scorer.reorder(index)
        if self._extension is not None:
            self._extension = self._extension.index_select(0, index)

    def advance(self, next_id: Tensor) -> None:
        token = next_id.clamp(0, self.num_tokens - 1)  # rows that ended keep a dummy prefix
        self.scorer.advance(token, self._extension.gather(1, token[:, None])[:, 0])


def reference_repeat_prompt(prompt: dict, times: int) -> dict:
    """Repeat every row of a left-padded prompt `times` times in place (row b -> rows b*times .. b*times+times-1).

    `audio_features` holds the frames of all rows flat in row-major order, so each row's frames are
    repeated as a block.
    """
    out = {k: v.repeat_interleave(times, dim=0) for k, v in prompt.items() if k != "audio_features" and isinstance(v, Tensor)}
    features = prompt.get("audio_features")
    if features is not None:
        counts = prompt["feature_mask"].sum(dim=1).tolist()
        blocks = torch.split(features, counts)
        out["audio_features"] = torch.cat([block for block in blocks for _ in range(times)], dim=0)
    return out


@torch.no_grad()
def reference_beam_search(
    model: MoSTBackbone,
    prompt: dict,
    max_new_tokens: int,
    beam_size: int,
    allowed_ids: Tensor,
    eos: int,
    max_lengths: Tensor | None = None,
    positions: tuple[Tensor, Tensor, Tensor] | None = None,
    rescorer: ReferenceJointCTCRescorer | None = None,
    word_lm: ReferenceWordLMFusion | None = None,
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
        rescorer: a `JointCTCRescorer` built over B * K rows (its CTC posteriors repeated like the prompt),
            or None for the decoder's scores alone.
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
    full = reference_repeat_prompt(prompt, K)
    if positions is not None:
        prompt_positions, start, stride = (p.repeat_interleave(K, dim=0) for p in positions)
        full["position_ids"] = prompt_positions
    cache = ReferenceKVCache(len(model.layers))
    # Only the first copy of each example is live at the start, so the first step does not pick K equal prefixes.
    scores = torch.full((B, K), NEG_INF, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    base = (torch.arange(B, device=device) * K)[:, None]  # (B, 1) first row of each example
    forbidden = ~allowed_ids.to(device)  # (V,)
    step = full
    for t in range(max_new_tokens):
        logits = model(
            step["input_ids"], step["modality_ids"], full["attention_mask"],
            step.get("audio_features"), step.get("feature_mask"), cache=cache, position_ids=step.get("position_ids"),
        ).logits[:, -1]  # (B*K, V)
        joint = rescorer(logits).double() if rescorer is not None else logits.double().log_softmax(dim=-1)
        if word_lm is not None:
            joint = joint + word_lm.scores()
        joint = joint.masked_fill(forbidden, NEG_INF)
        V = joint.shape[-1]
        total = (scores.view(-1, 1) + joint).view(B, K * V)  # (B, K*V)
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
        cache.reorder(rows)
        if rescorer is not None:
            rescorer.reorder(rows)
            rescorer.advance(next_id)
        if word_lm is not None:
            word_lm.reorder(rows)
            word_lm.advance(next_id)
        # Rows move only inside their example, whose copies share the prompt, its mask and its positions:
        # only the cache, the prefixes and the CTC state need reordering.
        new = {
            "input_ids": next_id[:, None],
            "modality_ids": torch.where(next_id >= text_vocab, Modality.AUDIO, Modality.TEXT)[:, None],
            "feature_mask": torch.zeros(B * K, 1, dtype=torch.bool, device=device),
            "attention_mask": torch.ones(B * K, 1, dtype=torch.bool, device=device),
        }
        if positions is not None:
            new["position_ids"] = (start + t * stride)[:, None].to(full["position_ids"].dtype)
        full["attention_mask"] = torch.cat([full["attention_mask"], new["attention_mask"]], dim=1)
        step = new
    out = []
    for b in range(B):
        if not finished[b]:  # the step budget ran out first: the best live prefix
            k = int(scores[b].argmax())
            finished[b].append((float(scores[b, k]), tokens[b * K + k].tolist()))
        out.append(max(finished[b], key=lambda item: item[0])[1])
    return out


class ReferenceWordLMFusion:
    """Word-LM score deltas of every next byte, for each row of a byte-level beam search.

    Args:
        lm: the word LM.
        trie: its lexicon.
        config: fusion weight, word bonus and OOV log-prob.
        num_rows: rows of the beam (B * K).
        vocab_size: width V of the decoder's logits; ids 0..255 are bytes.
        eos: the id that ends a transcript.
        device: where the score tensors are made (the decoder's device).
    """

    def __init__(
        self, lm: WordNgramLM, trie: LexiconTrie, config: WordLMConfig, num_rows: int, vocab_size: int, eos: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.lm, self.trie, self.config, self.eos, self.device = lm, trie, config, eos, device
        self.vocab_size = vocab_size
        self.word_chars = byte_word_chars()
        self._word_byte = torch.zeros(vocab_size, dtype=torch.float64)  # 1 at ids that continue a word
        self._word_byte[list(self.word_chars)] = 1.0
        self._ids_of_char: dict[str, list[int]] = {}  # trie character -> the byte ids looked up as it
        for i, ch in self.word_chars.items():
            self._ids_of_char.setdefault(ch, []).append(i)
        self.delimiters = torch.zeros(vocab_size, dtype=torch.bool)
        self.delimiters[[i for i in range(128) if i not in self.word_chars]] = True
        self.delimiters = self.delimiters.to(device)
        self.context: list[tuple[str, ...]] = [() for _ in range(num_rows)]  # completed words (last order-1)
        self.node: list[int] = [LexiconTrie.ROOT] * num_rows
        self._letters: dict[int, Tensor] = {}  # trie node -> (V,) LM delta of each word byte from it

    # ---- per-node and per-row pieces ---------------------------------------------------------
    def _letter_deltas(self, node: int) -> Tensor:
        """(V,) LM log-prob delta of extending the word at `node` by each word byte (0 elsewhere)."""
        if node not in self._letters:
            if node == OOV:
                delta = torch.zeros(self.vocab_size, dtype=torch.float64)
            else:
                here = self.trie.look_ahead[node]
                delta = self._word_byte * (self.config.oov_log_prob - here)  # leaving the lexicon
                for ch, child in self.trie.children[node].items():
                    ids = self._ids_of_char.get(ch)  # None for letters beyond ASCII (café): bytes cannot reach them
                    if ids is not None:
                        delta[ids] = self.trie.look_ahead[child] - here
            self._letters[node] = delta.to(self.device)
        return self._letters[node]

    def _completed(self, row: int) -> tuple[float, str | None]:
        """(LM delta, word) of ending the row's word in progress now; (0, None) with no word in progress."""
        node = self.node[row]
        if node == LexiconTrie.ROOT:
            return 0.0, None
        if node == OOV:  # its OOV log-prob was paid when it left the lexicon
            return 0.0, None
        word = self.trie.word[node]
        here = self.trie.look_ahead[node]
        if word is None:  # a prefix of words, not a word
            return self.config.oov_log_prob - here, None
        return self.lm.log_prob(self.context[row], word) - here, word

    def _history(self, row: int, word: str | None) -> tuple[str, ...]:
        """The row's context once its word in progress (`word`, None if outside the lexicon) is complete."""
        if self.node[row] == LexiconTrie.ROOT:
            return self.context[row]
        keep = self.lm.order - 1
        if word is None or keep == 0:  # an OOV word resets the context
            return ()
        return (self.context[row] + (word,))[-keep:]

    # ---- beam interface ----------------------------------------------------------------------
    def scores(self) -> Tensor:
        """(rows, V) float64: weight * LM delta (+ word_bonus at word ends) of each next id."""
        w, bonus = self.config.weight, self.config.word_bonus
        rows = []
        for row in range(len(self.node)):
            delta = w * self._letter_deltas(self.node[row])  # a new tensor: the cached one stays as it is
            end, word = self._completed(row)
            in_word = self.node[row] != LexiconTrie.ROOT
            end_score = w * end + (bonus if in_word else 0.0)
            delta[self.delimiters] = end_score
            delta[self.eos] = end_score + w * self.lm.log_prob(self._history(row, word), SENTENCE_END)
            rows.append(delta)
        return torch.stack(rows)

    def reorder(self, index: Tensor) -> None:
        """Row i continues row index[i]'s prefix."""
        index = index.tolist()
        self.context = [self.context[i] for i in index]
        self.node = [self.node[i] for i in index]

    def advance(self, next_id: Tensor) -> None:
        """Extend each row's text by its chosen id."""
        for row, token in enumerate(next_id.tolist()):
            ch = self.word_chars.get(token)
            node = self.node[row]
            if ch is not None:
                self.node[row] = OOV if node == OOV else self.trie.children[node].get(ch, OOV)
            elif node != LexiconTrie.ROOT:  # a delimiter (or <eos>) completes the word
                _, word = self._completed(row)
                self.context[row] = self._history(row, word)
                self.node[row] = LexiconTrie.ROOT


@torch.no_grad()
def reference_transcribe(decoder: Decoder, batch: dict) -> list[str]:
    """`Decoder.transcribe` of commit c3f8cb4 for ASR rows: the transcripts of a collated batch of ASR examples."""
    if not bool((batch["task_ids"] == TASKS.index("asr")).all()):
        raise ValueError("reference_transcribe decodes ASR rows only")
    latent = [m.cache_latent for m in decoder.backbone.modules() if isinstance(m, MultiHeadLatentAttention)]
    set_cache_latent(decoder.backbone, False)  # that commit's MLA cache: up-projected keys and values
    try:
        with eval_mode(decoder.backbone):
            rows = reference_asr_ids(decoder, prompts_from_batch(batch, decoder.specials.pad), True)
    finally:
        for module, value in zip((m for m in decoder.backbone.modules() if isinstance(m, MultiHeadLatentAttention)), latent):
            module.cache_latent = value
    return [decoder.tokenizer.decode([i for i in row if 0 <= i < decoder.specials.base_vocab_size]) for row in rows]


def reference_asr_ids(decoder: Decoder, prompt: dict, asr: bool) -> list[list[int]]:
    """`Decoder._asr_ids` of commit c3f8cb4 (`self` = `decoder`), over the reference pieces of this module."""
    self = decoder
    config, device = self.asr, self.device
    allowed = torch.zeros(self.backbone.config.vocab_size, dtype=torch.bool, device=device)
    allowed[: self.specials.base_vocab_size] = True
    allowed[self.specials.eos] = True
    scaled = self.scaled_positions and asr
    ctc_weight = config.ctc_weight if asr else 0.0
    beam = config.beam_size if asr else 1
    positions, rescorer = None, None
    if scaled or ctc_weight > 0:
        ctc_logits, ctc_lengths = self._prompt_ctc(prompt)  # (B, L, V + 1), (B,)
    if scaled:
        ids = greedy_ctc_ids(ctc_logits, ctc_lengths, self.backbone.config.text_vocab_size, self.specials.base_vocab_size)
        lengths = torch.tensor([len(t) for t in ids], dtype=torch.float32, device=device)
        positions = decoding_positions(prompt, torch.ones_like(lengths, dtype=torch.bool), lengths)
    if ctc_weight > 0:
        log_probs = ctc_logits.float().log_softmax(-1).repeat_interleave(beam, dim=0)  # (B * beam, L, V + 1)
        scorer = ReferenceCTCPrefixScorer(log_probs, ctc_lengths.repeat_interleave(beam), blank=self.backbone.config.text_vocab_size)
        rescorer = ReferenceJointCTCRescorer(scorer, ctc_weight, self.specials.base_vocab_size, self.specials.eos)
    ratio = config.max_tokens_per_frame if asr else None  # an ASR cap: answers are not transcripts of the audio
    frames = prompt["feature_mask"].sum(dim=1)  # (B,)
    word_lm = _reference_word_lm_fusion(self, prompt["input_ids"].shape[0] * beam) if asr else None
    if beam > 1 or word_lm is not None:
        caps = None if ratio is None else (ratio * frames.float()).ceil().long()
        return reference_beam_search(self.backbone, prompt, config.max_new_tokens, beam, allowed, self.specials.eos,
                                     max_lengths=caps, positions=positions, rescorer=rescorer, word_lm=word_lm)
    rows = generate(self.backbone, prompt, config.max_new_tokens, allowed, (self.specials.eos,),
                    positions=positions, rescorer=rescorer).tolist()
    if ratio is not None:  # greedy rows are independent: cutting one after decoding = stopping it there
        rows = [row[: max(1, math.ceil(ratio * n))] for row, n in zip(rows, frames.tolist())]
    return rows


def _reference_word_lm_fusion(self: Decoder, num_rows: int) -> ReferenceWordLMFusion | None:
    """`Decoder._word_lm_fusion` of commit c3f8cb4."""
    if self.asr.word_lm is None:
        return None
    lm, trie = counted_word_lm(self.asr.word_lm)
    return ReferenceWordLMFusion(lm, trie, self.asr.word_lm, num_rows, self.backbone.config.vocab_size,
                                 self.specials.eos, self.device)

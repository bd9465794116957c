"""CTC prefix scores for joint CTC / attention decoding (Watanabe et al., 2017; ESPnet's `CTCPrefixScore`).

A decoder that reads its audio through attention can skip a word or repeat one; the audio
encoder's CTC head cannot (its alignment is monotonic and covers every frame). Joint decoding picks
each next token by `(1 - w) log p_dec(c | h) + w (log psi(h + c) - log psi(h))`, where psi(h) is the
CTC probability that the audio's transcript starts with h, and psi(h + <eos>) the probability that
it is exactly h.

`CTCPrefixScorer` keeps, for each row's current prefix h, the forward variables over frames t

    r_n[t]  log P(frames 0..t emit h, the last frame a non-blank)
    r_b[t]  log P(frames 0..t emit h, the last frame a blank)

and scores every candidate token at once; `advance` extends each row's prefix by its chosen token.
The recursions are scans over frames, computed with `logcumsumexp` in float64.

The candidates' scores, log sum_t exp(phi[t-1] + x_t(c)) over frames t for every token c, are one
matrix product in probability space per step, (rows, T) @ (T, C), each factor scaled by its maximum
(over frames for x, so `exp(x - max)` is computed once per example). A sum so small that the
scaling could have flushed its terms to zero (< e^-600) is recomputed with `logsumexp`; the others
agree with it to float64 rounding (~1e-13), so decoding picks the same tokens as the direct sum.

A CTC posterior is peaky, so at most steps many candidates are such sums (a token spoken far from
where the prefix ends). Beam search needs only those that could enter its beam: with `exact=False`
such a sum is given its upper bound, log(e^-600) + the scales, and marked in `doubtful`; the beam
recomputes (`exact_scores`) only the marked candidates whose bound reaches its cut-off, and so picks
exactly the tokens that the exact scores would.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG_INF = float("-inf")
PAD_LOG_PROB = -1.0e4
SMALLEST_SCALED_SUM = 1.0e-260
"""Scaled sums below this (~e^-600) are recomputed directly: their terms may have underflowed (float64: e^-708)."""


def _log_scan(start: Tensor, inputs: Tensor, emit: Tensor) -> Tensor:
    """y[t] = logaddexp(y[t-1], inputs[t-1]) + emit[t], y[0] = start + emit[0], along dim 1 ((B, T) each but start (B,))."""
    # Unrolled: y[t] = S[t] + log(exp(start) + sum_{1<=s<=t} exp(inputs[s-1] - S[s-1])), S = cumsum(emit).
    cum = emit.cumsum(dim=1)  # (B, T)
    shifted = torch.cat([start[:, None], inputs[:, :-1] - cum[:, :-1]], dim=1)  # (B, T)
    return cum + torch.logcumsumexp(shifted, dim=1)


class CTCPrefixScorer:
    """Prefix scores of a batch of CTC posteriors (see the module docstring).

    Args:
        log_probs: (B, T, V + 1) log-softmax of the CTC head, the blank at index `blank`.
        lengths: (B,) valid frames of each row.
        blank: the blank's index.
        rows_per_example: R rows share each example's posteriors (a beam of R prefixes): row r scores against
            example r // R, so the scorer has B * R rows.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int, rows_per_example: int = 1) -> None:
        B, T, _ = log_probs.shape
        self.blank, self.rows_per_example = blank, rows_per_example
        valid = torch.arange(T, device=log_probs.device)[None] < lengths[:, None]  # (B, T)
        x = log_probs.double()
        # Past a row's end: blanks with probability 1, so the forward variables carry over unchanged
        # (a large finite penalty rather than -inf keeps the scans' cumulative sums finite).
        pad = torch.full_like(x, PAD_LOG_PROB)
        pad[..., blank] = 0.0
        self.x = torch.where(valid[..., None], x, pad)  # (B, T, V + 1) per example
        self.example = torch.arange(B * rows_per_example, device=x.device) // rows_per_example  # (rows,)
        self._scaled: tuple[Tensor, Tensor] | None = None  # exp(x - max over frames) and that max, on first use
        rows = B * rows_per_example
        self.last_frame = (lengths - 1).clamp(min=0).repeat_interleave(rows_per_example)  # (rows,)
        self.r_n = torch.full((rows, T), NEG_INF, dtype=torch.float64, device=x.device)
        self.r_b = self.x[..., blank].cumsum(dim=1).repeat_interleave(rows_per_example, dim=0)  # the empty prefix
        self.last = torch.full((rows,), -1, dtype=torch.long, device=x.device)  # last token of each prefix
        self.empty = torch.ones(rows, dtype=torch.bool, device=x.device)
        self.score = torch.zeros(rows, dtype=torch.float64, device=x.device)  # log psi(h)

    def _scaled_emissions(self, num_tokens: int) -> tuple[Tensor, Tensor]:
        """exp(x - m) (B, T, C) and m (B, C), m the max over frames of each example's token log-probs x."""
        if self._scaled is None or self._scaled[0].shape[-1] != num_tokens:
            x = self.x[..., :num_tokens]
            top = x.amax(dim=1)  # (B, C)
            self._scaled = ((x - top[:, None]).exp(), top)
        return self._scaled

    def extension_scores(self, num_tokens: int, exact: bool = True) -> Tensor:
        """(rows, num_tokens) log psi(h + c) for the tokens c = 0..num_tokens-1 (text ids, no blank).

        With `exact=False`, the sums that may have underflowed hold an upper bound of their score instead and are
        marked in `self.doubtful` (rows, num_tokens); `exact_scores` gives their true values.
        """
        R, C = self.rows_per_example, num_tokens
        start = torch.where(self.empty, 0.0, NEG_INF).to(self.r_n.dtype)[:, None]  # (rows, 1)
        # log P(h emitted by frame t - 1), the frame before c's first frame t; at t = 0 only the empty prefix.
        # After h, a new c may follow any frame; a repeat of h's last token only a blank (fixed below).
        before = torch.cat([start, torch.logaddexp(self.r_n, self.r_b)[:, :-1]], dim=1)  # (rows, T)
        before_max = before.amax(dim=1, keepdim=True).nan_to_num(neginf=0.0)  # (rows, 1); all -inf: impossible h
        emit, emit_max = self._scaled_emissions(C)  # (B, T, C), (B, C)
        B, T = emit.shape[0], emit.shape[1]
        sums = torch.bmm((before - before_max).exp().view(B, R, T), emit).view(B * R, C)  # (rows, C)
        scores = sums.log() + before_max + emit_max.repeat_interleave(R, dim=0)
        small = sums < SMALLEST_SCALED_SUM  # (rows, C) the sum's terms may have underflowed
        self._before, self.doubtful = before, None
        if not exact:
            bound = math.log(SMALLEST_SCALED_SUM) + before_max + emit_max.repeat_interleave(R, dim=0)  # (rows, C)
            scores = torch.where(small, bound, scores)  # >= the true score: the sum < e^-600 up to underflow
            self.doubtful = small
        elif bool(small.any()):
            rows, tokens = small.nonzero(as_tuple=True)
            scores[rows, tokens] = self.exact_scores(rows, tokens)
        repeat = (self.last >= 0) & (self.last < C)  # (rows,) h's last token is a candidate: after a blank only
        if bool(repeat.any()):
            rows = repeat.nonzero().flatten()
            x = self.x[self.example[rows], :, self.last[rows]]  # (n, T)
            after_blank = torch.cat([start[rows], self.r_b[rows, :-1]], dim=1)  # (n, T)
            scores[rows, self.last[rows]] = torch.logsumexp(after_blank + x, dim=1)
            if self.doubtful is not None:
                self.doubtful[rows, self.last[rows]] = False
        return scores

    def exact_scores(self, rows: Tensor, tokens: Tensor) -> Tensor:
        """(n,) log psi(h + c) summed directly for (row, token) pairs of the last `extension_scores` (no repeats)."""
        x = self.x[self.example[rows], :, tokens]  # (n, T)
        return torch.logsumexp(self._before[rows] + x, dim=1)

    def end_scores(self) -> Tensor:
        """(rows,) log psi(h + <eos>): the probability that the transcript is exactly h."""
        at_end = torch.logaddexp(self.r_n, self.r_b)  # (rows, T)
        return at_end.gather(1, self.last_frame[:, None])[:, 0]

    def advance(self, tokens: Tensor, scores: Tensor) -> None:
        """Extend each row's prefix by `tokens` (rows,) whose `extension_scores` were `scores` (rows,)."""
        phi = torch.where((tokens == self.last)[:, None], self.r_b, torch.logaddexp(self.r_n, self.r_b))  # (rows, T)
        emit = self.x[self.example, :, tokens]  # (rows, T)
        start = torch.where(self.empty, 0.0, NEG_INF).to(emit.dtype)
        r_n = _log_scan(start, phi, emit)
        blank = self.x[self.example, :, self.blank]
        r_b = _log_scan(torch.full_like(start, NEG_INF), r_n, blank)
        self.r_n, self.r_b = r_n, r_b
        self.last, self.score = tokens.clone(), scores.double()
        self.empty = torch.zeros_like(self.empty)

    def reorder(self, index: Tensor) -> None:
        """Row i takes row index[i]'s prefix state (beam search); rows i and index[i] must share their example."""
        self.r_n, self.r_b = self.r_n.index_select(0, index), self.r_b.index_select(0, index)
        self.last, self.empty = self.last.index_select(0, index), self.empty.index_select(0, index)
        self.score = self.score.index_select(0, index)


class JointCTCRescorer:
    """Greedy joint decoding for `generation.generate`: decoder log-probs mixed with CTC prefix scores.

    `__call__` turns the decoder's next-token logits (B, V) into joint scores over the same ids, -inf
    outside the text tokens 0..num_tokens-1 and <eos>; `advance` records the chosen ids.
    """

    def __init__(self, scorer: CTCPrefixScorer, weight: float, num_tokens: int, eos: int) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"the CTC weight of joint decoding must lie in (0, 1], got {weight}")
        self.scorer, self.weight, self.num_tokens, self.eos = scorer, weight, num_tokens, eos
        self._extension: Tensor | None = None
        self._decoder: Tensor | None = None
        self._dtype = torch.float32
        self.doubtful: Tensor | None = None
        """(B, V) after a call with exact=False: the scores that are upper bounds (`refine` makes them exact)."""

    def __call__(self, logits: Tensor, exact: bool = True) -> Tensor:
        """(B, V) joint scores of the next ids; with `exact=False` some are upper bounds, marked in `doubtful`."""
        C = self.num_tokens
        self._extension = self.scorer.extension_scores(C, exact=exact)  # (B, C)
        ctc = torch.full(logits.shape, NEG_INF, dtype=torch.float64, device=logits.device)
        ctc[:, :C] = self._extension
        ctc[:, self.eos] = self.scorer.end_scores()
        ctc = ctc - self.scorer.score[:, None]  # log psi(h + c) - log psi(h)
        self._decoder, self._dtype = logits.double().log_softmax(dim=-1), logits.dtype
        self.doubtful = None
        if not exact:
            self.doubtful = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            self.doubtful[:, :C] = self.scorer.doubtful
        return ((1 - self.weight) * self._decoder + self.weight * ctc).to(logits.dtype)

    def refine(self, rows: Tensor, ids: Tensor) -> Tensor:
        """(n,) the exact joint scores of doubtful (row, id) pairs of the last call, as an exact call computes them
        (bit for bit); the exact CTC scores replace the bounds for `advance`."""
        extension = self.scorer.exact_scores(rows, ids)
        self._extension[rows, ids] = extension
        self.doubtful[rows, ids] = False
        ctc = extension - self.scorer.score[rows]
        joint = (1 - self.weight) * self._decoder[rows, ids] + self.weight * ctc
        return joint.to(self._dtype)

    def reorder(self, index: Tensor) -> None:
        """Row i continues row index[i]'s prefix (beam search): the prefix state and this step's scores move with it."""
        self.scorer.reorder(index)
        if self._extension is not None:
            self._extension = self._extension.index_select(0, index)

    def advance(self, next_id: Tensor) -> None:
        token = next_id.clamp(0, self.num_tokens - 1)  # rows that ended keep a dummy prefix
        self.scorer.advance(token, self._extension.gather(1, token[:, None])[:, 0])

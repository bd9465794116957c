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
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")
PAD_LOG_PROB = -1.0e4


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

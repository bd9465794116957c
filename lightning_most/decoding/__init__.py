"""Decoding: greedy and beam search over the backbone, joint with CTC prefix scores and a fused word LM.

The public interface is `Decoder` with its `ASRDecodingConfig`; the stage modules, `inference`,
`commands.evaluate` and the benches decode through it. Its pieces, one module each:

    generation.py   `generate` (greedy / sampled, KV cache) and `prompts_from_batch`
    ctc_prefix.py   CTC prefix scores and the joint CTC / attention rescorer
    beam_search.py  beam search by the joint score (+ word LM)
    word_lm.py      word n-gram LM + lexicon trie, fused into the beam
    decoder.py      the ASR decoding policy (positions, CTC, beam, LM) and unit decoding
"""

from lightning_most.decoding.decoder import ASRDecodingConfig, Decoder, eval_mode, greedy_ctc_ids
from lightning_most.decoding.word_lm import WordLMConfig

__all__ = ["ASRDecodingConfig", "Decoder", "WordLMConfig", "eval_mode", "greedy_ctc_ids"]

"""Evaluation library: ASR/TTS WER, spoken-LM pair accuracy, spoken QA accuracy, reports.

Suites talk to the model only through the protocols re-exported here (``protocols.py``):

- ``asr.evaluate_asr(transcriber, cuts)`` -> ``AsrResult``
- ``tts.evaluate_tts(synthesizer, judge, cuts_or_texts)`` -> ``TtsResult``
- ``spoken_lm.evaluate_spoken_lm(scorer, pair_sets)`` -> ``{name: PairAccuracyResult}``
- ``spoken_qa.evaluate_spoken_qa_text(answerer, qa_set)`` / ``evaluate_spoken_qa_speech(answerer,
  judge, qa_set)`` -> ``QaResult``
- ``report.EvaluationReport.from_results({...})`` -> JSON, Markdown, TensorBoard

Judges are in ``judges.py``; offline miniature sets in ``spoken_lm_miniature.py`` and
``spoken_qa_miniature.py``.
"""

from lightning_most.evaluation.protocols import (
    AudioLikelihoodScorer,
    SpokenQuestionAnswerer,
    Synthesizer,
    Transcriber,
)

__all__ = ["AudioLikelihoodScorer", "SpokenQuestionAnswerer", "Synthesizer", "Transcriber"]

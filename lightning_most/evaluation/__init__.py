"""Evaluation library: ASR/TTS WER, spoken-LM pair accuracy, spoken QA accuracy, reports.

Suites talk to the model only through the protocols in ``protocols.py``.
"""

"""The one sample rate of the framework: every waveform in and out (data, encoders, vocoders, evaluation)."""

SAMPLE_RATE = 16000
"""Hz of every waveform the framework reads, computes features from, or writes."""

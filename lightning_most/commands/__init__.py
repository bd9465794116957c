"""Subcommands that use a trained checkpoint: `synthesize`, `transcribe`, `evaluate` (see `lightning_most.main`).

Each is a thin argparse wrapper over `lightning_most.inference.MostInference` and the evaluation
suites; bad input (missing or unreadable files, a checkpoint without `audio_io`) ends with a
one-line `error: ...` on stderr and exit status 2.
"""

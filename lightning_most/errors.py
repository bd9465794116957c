"""Errors that mean the user's input is unusable (not a bug): the CLI prints their message and exits 2."""

from __future__ import annotations

WORKER_TRACEBACK = "Original Traceback (most recent call last):"
"""How torch's DataLoader re-raises a worker's exception: the worker's traceback inside the message."""


class UnusableDataError(ValueError):
    """Nothing usable is left in a data source; the message names the files and what to do."""


def user_message(error: UnusableDataError) -> str:
    """The data source's own message, also when a DataLoader worker raised it (torch then wraps its traceback)."""
    message = str(error)
    if WORKER_TRACEBACK not in message:
        return message
    last = message.rstrip().splitlines()[-1]  # "datamodules.shards.UnusableDataError: <the message>"
    return last.split(": ", 1)[1] if ": " in last else last

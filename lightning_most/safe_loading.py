"""The one way the project reads a checkpoint or state file: `torch.load(weights_only=True)`.

A pickle can name any Python callable, and unpickling calls it: a checkpoint from a stranger could
run code on the user's machine. Torch's weights-only unpickler only rebuilds tensors, containers,
primitive types and the classes registered with `torch.serialization.add_safe_globals`; the project
registers its own config dataclasses there (below, and the stage config groups in `stages/base.py`), which
checkpoints carry in their hyperparameters. Everything else is refused before it runs.

Lightning's own loads (`--ckpt_path` resumes, `load_from_checkpoint`) go through `torch.load` with
the `weights_only` they are given; `None` means torch's default, which is `True` since torch 2.6
(unless the environment sets `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`). The shipped configs pass
`weights_only: true` explicitly (docs/distributed.md).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lightning_most.config import AttentionOverrides, AudioEncoderOverrides, ModelOverrides, MoEOverrides
from lightning_most.decoding.word_lm import WordLMConfig

# The config dataclasses a module built in Python keeps in its hyperparameters (YAML configs give dicts).
torch.serialization.add_safe_globals([ModelOverrides, MoEOverrides, AttentionOverrides, AudioEncoderOverrides, WordLMConfig])


class UnsafeCheckpointError(ValueError):
    """A file whose pickle names code outside the allow-list; nothing in it was run."""


class UnreadableCheckpointError(ValueError):
    """A file that is not a readable torch checkpoint (truncated, corrupt, or another format)."""


def _refused_global(error: pickle.UnpicklingError) -> str | None:
    """The `module.name` that torch's weights-only unpickler refused to call; None if it refused no global."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if "Weights only load failed" in str(error) and found else None


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a torch checkpoint or state file with `weights_only=True` (allow-listed project classes only).

    Args:
        path: the file (`.ckpt`, `.pt`, `meta.pt`, ...).
        map_location: where tensors go, as in `torch.load`.
        mmap: memory-map the file instead of reading it (tensors are read when touched).

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle names code that is not allow-listed (nothing was run).
        UnreadableCheckpointError: the file is truncated, corrupt or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if refused is None:
            raise _unreadable(path, error) from error
        raise UnsafeCheckpointError(
            f"refusing to load {path}: its pickle calls code that is not plain data or one of lightning_most's "
            f"config classes (it calls {refused}), and loading it would run that code. Nothing was run. "
            "Only load checkpoints you trust; a checkpoint written by lightning_most loads as is, and any other "
            "must be re-saved as a plain state_dict of tensors."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:  # KeyError: torch on non-torch bytes
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: BaseException) -> UnreadableCheckpointError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")[:300]
    return UnreadableCheckpointError(
        f"checkpoint {path} cannot be read ({type(error).__name__}: {first}): it is truncated, corrupt or not a "
        "torch file"
    )

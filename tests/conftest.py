"""Shared fixtures: tiny seeded models and batches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _drop_unimportable_lazy_modules() -> None:
    """Remove speechbrain's lazy modules whose backend is missing (e.g. k2) from sys.modules.

    Hypothesis scans sys.modules for constants and reads each module's `__file__`; on such a lazy
    module that read imports it and raises ImportError, which fails any property test that runs after
    speechbrain was imported (the venv inside the repository makes site-packages look local).
    """
    for name, module in list(sys.modules.items()):
        if type(module).__module__.startswith("speechbrain."):
            try:
                getattr(module, "__file__", None)
            except ImportError:
                del sys.modules[name]


@pytest.fixture(scope="session")
def tiny_fit_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 36-utterance corpus of `tests/tiny_fit.py` (16 units), built once per session."""
    from datamodules.embedded import prepare_embedded_corpus
    from tests.tiny_fit import CORPUS

    out = tmp_path_factory.mktemp("tiny_fit_corpus")
    prepare_embedded_corpus(out, CORPUS)
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (or set RUN_SLOW=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow") or os.environ.get("RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow or RUN_SLOW=1")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)

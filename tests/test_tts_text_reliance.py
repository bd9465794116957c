"""bench/tts_text_reliance.py on the tiny trained checkpoint: the three dev TTS losses, and clear errors for a
manifest without units or with another run's units."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_checkpoint"]

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("tts_text_reliance", ROOT / "bench" / "tts_text_reliance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reports_the_loss_with_true_shuffled_and_no_text(trained_run, capsys) -> None:
    cuts = trained_run.corpus_dir / "embedded_cuts_dev.jsonl.gz"
    result = _bench().main(["--ckpt", str(trained_run.checkpoint), "--cuts", str(cuts), "--max_cuts", "4"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["cuts"] == 4
    for key in ("true_text", "shuffled_text", "no_text"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert result["nats_from_the_text"] == pytest.approx(result["shuffled_text"] - result["true_text"])
    assert result["no_text"] != result["true_text"]  # the text reaches the loss


def test_refuses_a_manifest_without_this_runs_units(trained_run, tmp_path) -> None:
    from lhotse import load_manifest

    cuts = load_manifest(trained_run.corpus_dir / "embedded_cuts_dev.jsonl.gz")
    bare = tmp_path / "bare.jsonl.gz"
    cuts.map(_without_units).to_file(bare)
    with pytest.raises(ValueError, match="no cut carries units"):
        _bench().main(["--ckpt", str(trained_run.checkpoint), "--cuts", str(bare)])


def _without_units(cut):
    cut.custom = {k: v for k, v in (cut.custom or {}).items() if k != "units"}
    return cut

"""environment.yml and pyproject.toml declare the same runtime dependencies."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in env if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(project), "edit pyproject.toml and environment.yml together"


def test_torch_and_torchaudio_are_pinned_as_a_pair() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(d for d in project if d.startswith("torch=="))
    torchaudio = next(d for d in project if d.startswith("torchaudio=="))
    assert torch.split("==")[1] == torchaudio.split("==")[1]

"""`python -m lightning_most --help` lists every command, one line each, and every command's `--help` works.

As torchgeo's tests/test_main.py: the entry point is run as a user runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from lightning_most.main import EXTRA_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lightning_most.commands"]
ALL_EXTRA = sorted({*EXTRA_COMMANDS, *DECLARED})


@pytest.fixture(scope="module")
def top_level_help() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_most", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_lists_every_command_with_one_line(top_level_help: str):
    lines = top_level_help.splitlines()
    for command in LIGHTNING_COMMANDS:
        assert any(line.split()[:1] == [command] and len(line.split()) > 1 for line in lines), command
    section = next(i for i, line in enumerate(lines) if line.startswith("other commands"))
    listed = {line.split()[0]: line for line in lines[section + 1 :] if line.strip()}
    missing = sorted(set(ALL_EXTRA) - set(listed))
    assert not missing, f"--help does not list {missing} (an entry-point command? reinstall: pip install -e . --no-deps)"
    for command in ALL_EXTRA:
        assert len(listed[command].split()) > 2, f"{command} has no one-line help: {listed[command]!r}"


@pytest.mark.parametrize("command", ALL_EXTRA)
def test_each_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out

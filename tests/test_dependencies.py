"""One-way dependencies: `datamodules` may import `lightning_most`, never the reverse.

Every .py under lightning_most/ is parsed with `ast`: `import datamodules...` and `from datamodules...
import ...` anywhere (module level or inside functions), and any string constant that is a module path
into datamodules ("datamodules.x", "datamodules.x:main", as given to importlib or a command registry),
fail the test. Prose that mentions datamodules in a docstring or message is not a dependency.
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = "datamodules"
MODULE_PATH = re.compile(rf"^{FORBIDDEN}(\.\w+)*(:\w+)?$")  # "datamodules.embedded" or "datamodules.embedded:main"


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """`line: what` for every import of, or module-path string into, `datamodules` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.match(node.value):
            names = [node.value]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0].split(":")[0] == FORBIDDEN]
    return [f"{line}: {name}" for line, name in sorted(found)]


def test_the_check_finds_every_form_of_import():
    source = '''
import datamodules
import os, datamodules.dataset as d
from datamodules.dataset import FeatureConfig

def lazy():
    from datamodules.embedded import corpus_paths
    return importlib.import_module("datamodules.voices")

COMMANDS = {"prepare": "datamodules.embedded:main"}
"""A docstring may say that datamodules.dataset builds batches."""
import datamodules_extra
'''
    assert [hit.split(": ")[1] for hit in forbidden_imports(source)] == [
        "datamodules", "datamodules.dataset", "datamodules.dataset", "datamodules.embedded",
        "datamodules.voices", "datamodules.embedded:main",
    ]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "lightning_most").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_lightning_most_never_imports_datamodules(path: Path):
    assert forbidden_imports(path.read_text(), str(path)) == [], (
        f"{path.relative_to(ROOT)} depends on datamodules: move what it needs into lightning_most "
        "(datamodules may import lightning_most, never the reverse)"
    )


def test_prepare_is_declared_as_an_entry_point_command():
    """`python -m lightning_most prepare` reaches datamodules through packaging metadata, not an import."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["lightning_most.commands"]["prepare"] == "datamodules.embedded:main"


def test_installed_entry_points_match_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lightning_most.commands"]
    installed = {point.name: point.value for point in entry_points(group="lightning_most.commands")}
    assert installed == declared, "the installed metadata is stale: reinstall with `pip install -e . --no-deps`"


def test_evaluate_reads_the_test_split_prepare_writes(tmp_path: Path):
    from datamodules.embedded import corpus_paths
    from lightning_most.commands.evaluate import EMBEDDED_TEST_CUTS

    assert corpus_paths(tmp_path).cuts["test"] == tmp_path / EMBEDDED_TEST_CUTS


def test_evaluate_reads_the_held_out_questions_prepare_instructions_writes(tmp_path: Path):
    from datamodules.spoken_instructions import spoken_instruction_paths
    from lightning_most.commands.evaluate import HELD_OUT_QA

    assert spoken_instruction_paths(tmp_path).qa["test"] == tmp_path / HELD_OUT_QA

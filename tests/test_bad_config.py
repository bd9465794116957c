"""A config the user got wrong exits 2 with the key and the fix on the first line, no traceback (issue 17, item 5)."""

from __future__ import annotations

import pytest

from lightning_most.main import main


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("error: ")):]  # after jsonargparse's usage


@pytest.mark.parametrize(("override", "first_line", "detail"), [
    (["--model.init_args.bogus", "1"], 'error: Parser key "model":', "Option 'bogus' is not accepted"),
    (["--trainer.max_steps", "many"], 'error: Parser key "trainer.max_steps":', "Expected a <class 'int'>. Got value: many"),
])  # fmt: skip
def test_unknown_key_or_wrong_type(override: list[str], first_line: str, detail: str, capsys) -> None:
    lines = _error(["fit", "--config", "conf/quickstart.yaml", *override, "--print_config"], capsys)
    assert lines[0] == first_line and any(detail in line for line in lines[:6])


def test_impossible_combination_names_the_key_and_the_fix(tmp_path, capsys) -> None:
    argv = ["fit", "--config", "conf/quickstart.yaml", "--model.init_args.backbone_overrides.audio_encoder.ctc_head",
            "false", "--data.init_args.corpus_dir", str(tmp_path / "corpus")]
    lines = _error(argv, capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ctc.weight=1.0 needs a CTC head: ")
    assert not (tmp_path / "corpus").exists()  # refused before any data work

"""A config the user got wrong exits 2 with the key and the fix on the first line, no traceback (issue 17, item 5)."""

from __future__ import annotations

import pytest

from lightning_most.main import main


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err.splitlines()


@pytest.mark.parametrize(("override", "first_line", "detail"), [
    (["--model.init_args.bogus", "1"], 'error: Parser key "model":', "Option 'bogus' is not accepted"),
    (["--trainer.max_steps", "many"], 'error: Parser key "trainer.max_steps":', "Expected a <class 'int'>. Got value: many"),
])  # fmt: skip
def test_unknown_key_or_wrong_type(override: list[str], first_line: str, detail: str, capsys) -> None:
    lines = _error(["fit", "--config", "conf/quickstart.yaml", *override, "--print_config"], capsys)
    assert lines[0] == first_line and any(detail in line for line in lines[:6])


def test_impossible_combination_names_the_key_and_the_fix(tmp_path, capsys) -> None:
    argv = ["fit", "--config", "conf/quickstart.yaml", "--model.init_args.ctc_warmup_steps", "5",
            "--model.init_args.ctc_weight", "0", "--data.init_args.corpus_dir", str(tmp_path / "corpus")]
    assert _error(argv, capsys) == ["error: ctc_warmup_steps=5 trains the CTC head: set ctc_weight > 0"]
    assert not (tmp_path / "corpus").exists()  # refused before any data work

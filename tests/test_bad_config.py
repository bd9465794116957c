"""A config the user got wrong exits 2 with the key and the fix on the first line, no traceback (issue 17, item 5)."""

from __future__ import annotations

import pytest

from lightning_most.main import main, parse_error_headline


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err  # no 50-line usage before (or after) the message
    return err.splitlines()


@pytest.mark.parametrize(("override", "first_line"), [
    (["--model.init_args.bogus", "1"],
     ("error: model.init_args.bogus: lightning_most.stages.Stage1Module has no argument 'bogus'; remove it or fix its "
      "spelling (`python -m lightning_most fit --model.help lightning_most.stages.Stage1Module` lists the arguments)")),
    (["--trainer.max_steps", "many"],
     "error: trainer.max_steps must be an integer, got 'many': give an integer (`--trainer.max_steps VALUE`)"),
])  # fmt: skip
def test_unknown_key_or_wrong_type_comes_first(override: list[str], first_line: str, capsys) -> None:
    lines = _error(["fit", "--config", "conf/quickstart.yaml", *override, "--print_config"], capsys)
    assert lines[0] == first_line
    assert lines[1] == "(`python -m lightning_most fit --help` lists the accepted options)"


def test_an_error_without_a_headline_is_jsonargparse_s_own_first(capsys) -> None:
    lines = _error(["fit", "--config", "conf/quickstart.yaml", "--trainer.bogus", "1"], capsys)
    assert lines[0].startswith("error: ") and "trainer.bogus" in lines[0]


@pytest.mark.parametrize(("override", "fix"), [
    (["--model.init_args.audio_feature_dim", "5"], "set the data's features"),
    (["--model.init_args.num_audio_units", "7"], "set the data's unit count"),
    (["--model.init_args.tokenizer", "some/folder"], "set data.init_args.tokenizer"),
])  # fmt: skip
def test_a_linked_argument_set_on_the_model_is_refused(override: list[str], fix: str, tmp_path, capsys) -> None:
    """jsonargparse would replace it by the data module's value without a word; it is refused before any work."""
    argv = ["fit", "--config", "conf/quickstart.yaml", "--data.init_args.corpus_dir", str(tmp_path / "corpus"), *override]
    lines = _error(argv, capsys)
    assert lines[0].startswith(f"error: {override[0][2:]}=") and "comes from the data module" in lines[0]
    assert fix in lines[0]
    assert not (tmp_path / "corpus").exists()


def test_parse_error_headline_leaves_other_messages_whole() -> None:
    assert parse_error_headline("Unrecognized arguments: --x 1", "prog") == "Unrecognized arguments: --x 1"


def test_impossible_combination_names_the_key_and_the_fix(tmp_path, capsys) -> None:
    argv = ["fit", "--config", "conf/quickstart.yaml", "--model.init_args.backbone_overrides.audio_encoder.ctc_head",
            "false", "--data.init_args.corpus_dir", str(tmp_path / "corpus")]
    lines = _error(argv, capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ctc.weight=1.0 needs a CTC head: ")
    assert not (tmp_path / "corpus").exists()  # refused before any data work


def test_unusable_data_exits_2_with_the_sources_message(monkeypatch, capsys):
    """Every shard of a source torn (raised in the process or in a DataLoader worker): one line, exit 2."""
    import lightning_most.main as cli
    from lightning_most.errors import WORKER_TRACEBACK, UnusableDataError

    message = "Shar shards s/cuts.000000.jsonl.gz hold no readable cut: write them again with export_shar"
    in_worker = (f"Caught UnusableDataError in DataLoader worker process 0.\n{WORKER_TRACEBACK}\n  File \"x.py\", "
                 f"line 1, in f\ndatamodules.shards.UnusableDataError: {message}\n")
    for raised in (UnusableDataError(message), UnusableDataError(in_worker)):
        def fail(*args, raised=raised, **kwargs):
            raise raised

        monkeypatch.setattr(cli, "MostCLI", fail)
        with pytest.raises(SystemExit) as stop:
            cli.main(["fit", "--config", "conf/quickstart.yaml"])
        assert stop.value.code == 2
        assert capsys.readouterr().err == f"error: {message}\n"

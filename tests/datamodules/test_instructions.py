"""Instruction data: the SmolTalk-layout reader, the generated instruction set, exact-match scoring."""

from __future__ import annotations

import calendar
import datetime
import json
import re
from collections import Counter

import pytest

from datamodules.generated_instructions import (
    RELATIONS,
    GeneratedInstructionsConfig,
    generate_instructions,
    relation_pairs,
)
from datamodules.instructions import InstructionPair, read_instructions, write_instructions
from datamodules.smoltalk import ConversationConfig, ConversationFormatError, convert_conversations, read_conversations
from lightning_most.evaluation.spoken_qa import exact_match

CONVERSATIONS = [
    {"messages": [
        {"role": "system", "content": "You are concise."},
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Blue."},
    ], "source": "miniature"},
    {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]},
    {"messages": [{"role": "user", "content": "Write a long essay."}, {"role": "assistant", "content": "x" * 500}]},
    {"messages": [{"role": "user", "content": "Nobody answers this."}]},
]


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(params=["jsonl", "parquet"])
def conversation_file(request, tmp_path):
    """The miniature conversations in SmolTalk's JSONL or Parquet layout."""
    if request.param == "jsonl":
        path = tmp_path / "smoltalk.jsonl"
        _write_jsonl(path, CONVERSATIONS)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "smoltalk.parquet"
        pq.write_table(pa.Table.from_pylist(CONVERSATIONS), path)
    return path


def test_first_turn_gives_the_first_answered_user_message(conversation_file):
    skipped: Counter = Counter()
    pairs = list(read_conversations(conversation_file, ConversationConfig(max_chars=200), skipped))
    assert [(p.prompt, p.response) for p in pairs] == [
        ("System: You are concise.\nUser: Name a primary colour.", "Red."),
        ("Say hi.", "Hi."),
    ]
    assert skipped == Counter({"too_long": 1, "no_answer": 1})


def test_all_turns_gives_every_answer_with_its_context(conversation_file):
    pairs = list(read_conversations(conversation_file, ConversationConfig(turns="all_turns", max_chars=200)))
    assert [(p.id.split("-", 1)[1], p.response) for p in pairs] == [("0000001-0", "Red."), ("0000001-1", "Blue."), (
        "0000002-0", "Hi.")]
    assert pairs[1].prompt == (
        "System: You are concise.\nUser: Name a primary colour.\nAssistant: Red.\nUser: Another one?"
    )


def test_system_message_can_be_left_out(conversation_file):
    pairs = list(read_conversations(conversation_file, ConversationConfig(include_system=False, max_chars=200)))
    assert pairs[0].prompt == "Name a primary colour."


def test_unknown_role_names_file_row_and_role(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [CONVERSATIONS[1], {"messages": [{"role": "human", "content": "Hi"}]}])
    with pytest.raises(ConversationFormatError, match=r"bad\.jsonl, row 2, message 1: unknown role 'human'"):
        list(read_conversations(path))


def test_row_without_messages_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [{"conversation": []}])
    with pytest.raises(ConversationFormatError, match="row 1: no \"messages\" field"):
        list(read_conversations(path))


def test_convert_writes_a_shard_and_reports_skips(conversation_file, tmp_path):
    out = tmp_path / "out" / "instructions.jsonl.gz"
    summary = convert_conversations([conversation_file], out, ConversationConfig(max_chars=200))
    assert summary["pairs"] == 2 and summary["skipped"] == {"too_long": 1, "no_answer": 1}
    assert [p.response for p in read_instructions(out)] == ["Red.", "Hi."]


def test_instruction_shards_round_trip(tmp_path):
    pairs = [InstructionPair("a", "What is 2 plus 2?", "4", ("4",), "addition", "entity")]
    write_instructions(pairs, tmp_path / "x.jsonl.gz")
    assert list(read_instructions(tmp_path / "x.jsonl.gz")) == pairs
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "4"}\n')
    with pytest.raises(ValueError, match=r"line 1 of .*bad\.jsonl is not an instruction pair"):
        list(read_instructions(tmp_path / "bad.jsonl"))


@pytest.fixture(scope="module")
def generated():
    """The default generated instruction set."""
    return generate_instructions(GeneratedInstructionsConfig())


def test_generated_set_is_several_thousand_deterministic_pairs(generated):
    assert len(generated["train"]) >= 4000
    assert len(generated["dev"]) == len(generated["test"]) == 20 * len(RELATIONS)
    again = relation_pairs(RELATIONS["capital_of"], GeneratedInstructionsConfig())
    assert again["train"] == [p for p in generated["train"] if p.relation == "capital_of"]
    other = relation_pairs(RELATIONS["capital_of"], GeneratedInstructionsConfig(seed=1))
    assert other["train"] != again["train"]


def _slots(template: str, prompt: str) -> dict | None:
    pattern = re.escape(template[0].upper() + template[1:])
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>.+)", pattern)
    match = re.fullmatch(pattern, prompt)
    return match.groupdict() if match else None


def test_held_out_templates_never_appear_in_train(generated):
    for relation in RELATIONS.values():
        held = relation.templates[-1]
        train = [p for p in generated["train"] if p.relation == relation.name]
        assert not any(_slots(held, p.prompt) for p in train), relation.name
        for split in ("dev", "test"):
            for pair in (p for p in generated[split] if p.relation == relation.name and "template" in p.holdout):
                assert _slots(held, pair.prompt) is not None, pair


def _operands(prompt: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", prompt))


def test_held_out_entities_of_computed_relations_are_not_in_train(generated):
    train = {_operands(p.prompt) for p in generated["train"] if p.relation == "addition"}
    held = {split: [p for p in generated[split] if p.relation == "addition" and "entity" in p.holdout]
            for split in ("dev", "test")}
    assert held["dev"] and held["test"]
    for pairs in held.values():
        assert not {_operands(p.prompt) for p in pairs} & train
    assert not {_operands(p.prompt) for p in held["dev"]} & {_operands(p.prompt) for p in held["test"]}


def test_recalled_dev_facts_are_taught_in_train_in_another_wording(generated):
    train_answers = {(p.response, p.prompt.split()[-1]) for p in generated["train"] if p.relation == "capital_of"}
    for pair in (p for p in generated["dev"] if p.relation == "capital_of"):
        assert pair.holdout == "template"
        country = _slots(RELATIONS["capital_of"].templates[-1], pair.prompt)["country"]
        assert any(p.response == pair.response and country in p.prompt for p in generated["train"])
    assert train_answers


def test_answers_are_computed_correctly(generated):
    for pair in generated["train"] + generated["test"]:
        numbers = _operands(pair.prompt)
        if pair.relation == "addition":
            assert int(pair.response) == numbers[0] + numbers[1]
        elif pair.relation == "multiplication":
            assert int(pair.response) == numbers[0] * numbers[1]
        elif pair.relation == "weekday_of_date":
            month, day, year = re.search(r"(\w+) (\d+), (\d+)", pair.prompt).groups()
            date = datetime.date(int(year), list(calendar.month_name).index(month), int(day))
            assert pair.response == calendar.day_name[date.weekday()]
        elif pair.relation == "capital_of" and "France" in pair.prompt.split():
            assert pair.response == "Paris"
        elif pair.relation == "element_symbol" and pair.prompt.endswith(" iron."):
            assert pair.response == "Fe"
    antonyms = {p.prompt: p.response for p in generated["train"] if p.relation == "antonym"}
    assert antonyms and all(" " not in answer for answer in antonyms.values())


def test_answers_are_short(generated):
    lengths = [len(p.response.split()) for split in generated.values() for p in split]
    assert max(lengths) <= 4 and sum(lengths) / len(lengths) < 1.2


@pytest.mark.parametrize(
    "output,aliases,expected",
    [("19", ["19"], True), ("Nineteen.", ["19"], True), ("the Americas", ["Americas"], True),
     ("It is 19", ["19"], False), ("Paris", ["Lima"], False), ("", ["19"], False), ("fe", ["Fe"], True)],
)
def test_exact_match_normalises_case_numbers_and_articles(output, aliases, expected):
    assert exact_match(output, aliases) is expected


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown \\['capitals'\\]"):
        GeneratedInstructionsConfig(relations=("capitals",))
    with pytest.raises(ValueError, match="turns='last'"):
        ConversationConfig(turns="last")


def test_convert_command_line(conversation_file, tmp_path, capsys):
    from datamodules.smoltalk import main

    out = tmp_path / "cli.jsonl.gz"
    main(["--files", f"[{conversation_file}]", "--out", str(out), "--conversations.turns", "all_turns",
          "--conversations.max_chars", "200"])
    assert json.loads(capsys.readouterr().out)["pairs"] == 3
    assert [p.response for p in read_instructions(out)] == ["Red.", "Blue.", "Hi."]

"""Read conversations in the SmolTalk layout (the instruction data MoST used) into instruction pairs.

A conversation file is JSON Lines (`.jsonl`, `.jsonl.gz`) or Parquet (`.parquet`), one conversation
a row, with a `messages` column (other columns are ignored):

    {"messages": [{"role": "system", "content": "You are concise."},
                  {"role": "user", "content": "Name a primary colour."},
                  {"role": "assistant", "content": "Red."},
                  {"role": "user", "content": "Another one?"},
                  {"role": "assistant", "content": "Blue."}]}

Roles are `system`, `user` and `assistant`. `ConversationConfig.turns` says which pairs a row gives:

    first_turn   one pair: the first user message -> the assistant message that answers it
    all_turns    one pair per assistant message that answers a user message; its prompt is the whole
                 conversation before it

A prompt with context (a system message, or earlier turns under `all_turns`) is rendered one
message a line, `System: ...`, `User: ...`, `Assistant: ...`, ending with the user message being
answered; a lone first user message is its prompt as is. So `first_turn` of the example gives
"System: You are concise.\\nUser: Name a primary colour." -> "Red." and `all_turns` adds
"System: ...\\nUser: Name a primary colour.\\nAssistant: Red.\\nUser: Another one?" -> "Blue.".

Problems: a row without a `messages` list, or a message with an unknown role or without string
content, raises `ConversationFormatError` naming the file, the row (1-based) and the fix. Pairs
whose prompt + response exceed `max_chars`, whose text is empty, or rows with no answered user
message are skipped and counted per reason (`too_long`, `empty_text`, `no_answer`) in the
`skipped` Counter given to the reader; `convert_conversations` reports them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datamodules.instructions import InstructionPair, write_instructions

ROLES: tuple[str, ...] = ("system", "user", "assistant")
TURNS: tuple[str, ...] = ("first_turn", "all_turns")
log = logging.getLogger(__name__)


class ConversationFormatError(ValueError):
    """A conversation row that is not in the SmolTalk layout."""


@dataclass
class ConversationConfig:
    """Which pairs a conversation gives and which are too long."""

    turns: str = "first_turn"
    """`first_turn` (first user message + its answer) or `all_turns` (every answered user message, with context)."""
    include_system: bool = True
    """Put the system message at the head of the prompt."""
    max_chars: int = 4000
    """Pairs whose prompt + response are longer (in characters) are skipped and counted as `too_long`."""

    def __post_init__(self) -> None:
        if self.turns not in TURNS:
            raise ValueError(f"ConversationConfig.turns={self.turns!r}: use one of {TURNS}.")
        if self.max_chars < 1:
            raise ValueError(f"ConversationConfig.max_chars must be >= 1, got {self.max_chars}.")


def _rows(path: Path) -> Iterator[object]:
    """The `messages` value of each row, in file order."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if "messages" not in parquet.schema_arrow.names:
            raise ConversationFormatError(f"{path} has no `messages` column (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(columns=["messages"], batch_size=1024):
            yield from batch.column(0).to_pylist()
        return
    from lhotse.serialization import open_best

    with open_best(str(path), "r") as f:
        for row_no, line in enumerate(f, start=1):
            if not line.strip():
                yield None
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConversationFormatError(f"{path}, row {row_no}: not JSON ({e.msg})") from e
            if not isinstance(row, dict) or "messages" not in row:
                raise ConversationFormatError(f'{path}, row {row_no}: no "messages" field; each row needs one')
            yield row["messages"]


def _checked_messages(messages: object, path: Path, row_no: int) -> list[tuple[str, str]]:
    if not isinstance(messages, list):
        raise ConversationFormatError(f"{path}, row {row_no}: `messages` must be a list of {{role, content}}")
    out = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ConversationFormatError(f"{path}, row {row_no}, message {i}: not a {{role, content}} object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ConversationFormatError(
                f"{path}, row {row_no}, message {i}: unknown role {role!r}; roles are {ROLES} "
                "(map other roles to these before reading)"
            )
        if not isinstance(content, str):
            raise ConversationFormatError(f"{path}, row {row_no}, message {i}: content must be a string")
        out.append((role, content.strip()))
    return out


def _render(context: list[tuple[str, str]], question: str) -> str:
    if not context:
        return question
    lines = [f"{role.capitalize()}: {content}" for role, content in context]
    return "\n".join([*lines, f"User: {question}"])


def conversation_pairs(
    messages: list[tuple[str, str]], config: ConversationConfig
) -> Iterator[tuple[int, str, str]]:
    """(turn index, prompt, response) of each answered user message the config keeps (see the module docstring)."""
    context: list[tuple[str, str]] = []
    turn = 0
    for i, (role, content) in enumerate(messages):
        if role == "assistant" and i > 0 and messages[i - 1][0] == "user":
            yield turn, _render(context[:-1], messages[i - 1][1]), content
            turn += 1
            if config.turns == "first_turn":
                return
        if role != "system" or config.include_system:
            context.append((role, content))


def read_conversations(
    path: str | Path, config: ConversationConfig | None = None, skipped: Counter | None = None
) -> Iterator[InstructionPair]:
    """Instruction pairs of one conversation file; skips are added to `skipped` per reason."""
    config = config or ConversationConfig()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file {path} does not exist")
    skipped = Counter() if skipped is None else skipped
    stem = path.name.split(".")[0]
    for row_no, messages in enumerate(_rows(path), start=1):
        if messages is None:
            continue
        answered = 0
        for turn, prompt, response in conversation_pairs(_checked_messages(messages, path, row_no), config):
            answered += 1
            if not prompt or not response:
                skipped["empty_text"] += 1
            elif len(prompt) + len(response) > config.max_chars:
                skipped["too_long"] += 1
            else:
                yield InstructionPair(f"{stem}-{row_no:07d}-{turn}", prompt, response, (response,), "conversation")
        if answered == 0:
            skipped["no_answer"] += 1


def convert_conversations(
    paths: list[str | Path], out_path: str | Path, config: ConversationConfig | None = None
) -> dict:
    """Write the pairs of every conversation file to one instruction shard; return and log the counts."""
    skipped: Counter = Counter()
    pairs = (pair for path in paths for pair in read_conversations(path, config, skipped))
    written = write_instructions(pairs, out_path)
    summary = {"pairs": written, "skipped": dict(skipped), "files": [str(p) for p in paths]}
    if skipped:
        log.warning("conversations: skipped %s (written %d pairs to %s)", dict(skipped), written, out_path)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Command line: `python -m datamodules.smoltalk --files '[a.parquet, b.jsonl]' --out instructions.jsonl.gz`."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="datamodules.smoltalk", description=convert_conversations.__doc__)
    parser.add_argument("--files", type=list[str], required=True, help="Conversation files (JSONL or Parquet).")
    parser.add_argument("--out", type=str, required=True, help="The instruction shard to write (.jsonl.gz).")
    parser.add_class_arguments(ConversationConfig, "conversations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = ConversationConfig(**args.conversations.as_dict())
    summary = convert_conversations(args.files, args.out, config)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

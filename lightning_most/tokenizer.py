"""Text tokenizers and the unified token-id space shared by text and audio units.

Id space of the backbone (one embedding table, two output heads):

    [0, text_vocab_size)                          text tokens, special tokens included
    [text_vocab_size, text_vocab_size + n_units)  discrete audio units (unit u -> text_vocab_size + u)

Special tokens (task markers, audio brackets) live at the end of the text range, right after the
tokenizer's own vocabulary, so a pretrained text embedding keeps its ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<asr>",
    "<tts>",
    "<text_lm>",
    "<audio_start>",
    "<audio_end>",
    "<speech_instruct>",
    "<text_instruct>",
    "<answer>",
)


class TextTokenizer(Protocol):
    """What the data pipeline and the stage modules need from a tokenizer."""

    base_vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class SpecialTokens:
    """Ids of the special tokens, placed after a tokenizer's own vocabulary."""

    def __init__(self, base_vocab_size: int) -> None:
        self.base_vocab_size = base_vocab_size
        self.ids = {name: base_vocab_size + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.pad, self.bos, self.eos = self.ids["<pad>"], self.ids["<bos>"], self.ids["<eos>"]
        self.asr, self.tts, self.text_lm = self.ids["<asr>"], self.ids["<tts>"], self.ids["<text_lm>"]
        self.audio_start, self.audio_end = self.ids["<audio_start>"], self.ids["<audio_end>"]
        self.speech_instruct = self.ids["<speech_instruct>"]
        self.text_instruct = self.ids["<text_instruct>"]
        self.answer = self.ids["<answer>"]

    @property
    def text_vocab_size(self) -> int:
        """Smallest text vocabulary that holds the tokenizer and every special token."""
        return self.base_vocab_size + len(SPECIAL_TOKENS)

    def __contains__(self, token_id: int) -> bool:
        return self.base_vocab_size <= token_id < self.text_vocab_size


class ByteTokenizer:
    """UTF-8 bytes as tokens (256 ids): needs no file, the offline default for the tiny presets."""

    base_vocab_size = 256

    def encode(self, text: str) -> list[int]:
        """Encode text as its UTF-8 bytes."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Decode byte ids, dropping ids outside the byte range (specials, audio units)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    """A transformers tokenizer loaded from a local directory (e.g. DeepSeek-V2-Lite, Llama-3.2)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {path} does not exist: point `tokenizer` at a local folder "
                "holding tokenizer.json / tokenizer_config.json (nothing is downloaded)."
            )
        self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.base_vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        """Encode text without the tokenizer's own BOS/EOS (the layouts add ours)."""
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        """Decode ids, dropping ids outside the tokenizer's vocabulary."""
        return self._tok.decode([i for i in ids if 0 <= i < self.base_vocab_size])


def build_tokenizer(name_or_path: str) -> ByteTokenizer | HuggingFaceTokenizer:
    """`"byte"` gives the offline byte tokenizer; anything else is a local transformers folder."""
    if name_or_path == "byte":
        return ByteTokenizer()
    return HuggingFaceTokenizer(name_or_path)

"""Edge cases of the WER text normalisation."""

from __future__ import annotations

import pytest

from lightning_most.evaluation.normalize import normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello,  World!", "hello world"),
        ("  \tTabs\nand\u00a0spaces  ", "tabs and spaces"),
        ("Don’t stop—believing", "don't stop believing"),
        ("It’s o'clock", "it's o'clock"),
        ("'Tis the dogs' bone", "tis the dogs bone"),
        ("'quoted'", "quoted"),
        ("well-known mother-in-law", "well known mother in law"),
        ("rock & roll", "rock and roll"),
        ("5% of 1,000,000", "five percent of one million"),
        ("the 21st of May 1990", "the twenty first of may one thousand nine hundred ninety"),
        ("2nd place, 3rd row", "second place third row"),
        ("pi is 3.14.", "pi is three point one four"),
        ("101 dalmatians", "one hundred one dalmatians"),
        ('HE SAID "YES" (twice); ok?', "he said yes twice ok"),
        ("snake_case", "snake case"),
        ("Café NAÏVE", "café naïve"),
        ("ＦＵＬＬ１２", "full twelve"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_is_idempotent() -> None:
    text = "Mr. O’Neil's 2 well-known cafés—& 3.5% more!"
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_a_number_beyond_cardinal_words_is_read_digit_by_digit() -> None:
    # A looping hypothesis can emit a digit run longer than inflect can spell as a cardinal.
    assert normalize_text("so 1" + "0" * 60 + " ok") == "so one " + "zero " * 60 + "ok"

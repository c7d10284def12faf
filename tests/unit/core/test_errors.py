"""Error texts that quote a client's value stay short whatever the value's size."""

from __future__ import annotations

import pytest

from genoserve.core.errors import MAX_MESSAGE_BYTES, QUOTED_CHARS, clipped, quoted


def test_short_values_are_quoted_whole() -> None:
    assert quoted("chr1") == "'chr1'"
    assert quoted("x" * QUOTED_CHARS) == repr("x" * QUOTED_CHARS)


def test_long_values_are_cut_and_their_length_stated() -> None:
    text = quoted("q" * 1_000_000)
    assert text == repr("q" * QUOTED_CHARS) + "... (1000000 characters)"
    assert len(text) < 100


def test_quoted_values_are_escaped() -> None:
    assert quoted("a\nb'") == repr("a\nb'")


def test_short_messages_are_kept() -> None:
    assert clipped("sequences[0]: is empty") == "sequences[0]: is empty"


@pytest.mark.parametrize("char", ["a", "é", "🧬"])
def test_long_messages_fit_the_byte_limit_at_a_character_boundary(char: str) -> None:
    text = char * 100_000
    out = clipped(text)
    assert len(out.encode()) <= MAX_MESSAGE_BYTES
    assert out.endswith(" ... (100000 characters in all)")
    assert set(out[: out.index(" ...")]) == {char}  # no broken character

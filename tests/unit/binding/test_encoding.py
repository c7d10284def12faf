"""One-hot encoding, reverse complement, padding and every bad-input rule, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.binding import encoding, strands
from genoserve.binding.encoding import NamedSequence
from genoserve.core.errors import InvalidArgument

A, C, G, T = np.eye(4, dtype=np.float32)
N = np.full(4, 0.25, dtype=np.float32)


def test_one_hot_by_hand_lower_case_and_n() -> None:
    [fitted] = encoding.check([NamedSequence("s", "acgTN")], 5, crop=False)
    np.testing.assert_array_equal(encoding.one_hot([fitted])[0], np.stack([A, C, G, T, N]))


def test_reverse_complement_by_hand() -> None:
    batch = encoding.one_hot(["AACGN"])
    assert encoding.decode(encoding.reverse_complement(batch)) == ["NCGTT"]
    assert encoding.decode(encoding.reverse_complement(encoding.reverse_complement(batch))) == ["AACGN"]


def test_short_sequences_are_n_padded_centred() -> None:
    assert encoding.fit_length("ACG", 7, crop=False) == "NNACGNN"
    assert encoding.fit_length("ACGT", 7, crop=False) == "NACGTNN"  # odd padding: the extra N on the right
    padded = encoding.one_hot(encoding.check([NamedSequence("s", "G")], 3, crop=False))[0]
    np.testing.assert_array_equal(padded, np.stack([N, G, N]))


def test_long_sequences_are_centre_cropped_only_when_asked() -> None:
    assert encoding.fit_length("AACCGGTT", 4, crop=True) == "CCGG"
    assert encoding.fit_length("AACCGGTTA", 4, crop=True) == "CCGG"
    with pytest.raises(InvalidArgument) as info:
        encoding.check([NamedSequence("chr1:100-200", "ACGTACGT")], 4, crop=False)
    [violation] = info.value.violations
    assert violation.field == "sequences[0].bases"
    assert "'chr1:100-200': length 8 exceeds the model's 4; set crop" in violation.description


@pytest.mark.parametrize(
    ("bases", "position", "char"),
    [("ACGU", 3, "U"), ("AC GT", 2, " "), ("ACRT", 2, "R"), ("AC-T", 2, "-"), ("ACGé", 3, "é"), ("ACG\n", 3, "\n")],
)
def test_any_other_character_names_the_id_and_position(bases: str, position: int, char: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        encoding.check([NamedSequence("ok", "ACGT"), NamedSequence("seq7", bases)], 10, crop=False)
    [violation] = info.value.violations
    assert violation.field == "sequences[1].bases"
    assert f"'seq7': invalid character {char!r} at position {position}" in violation.description


def test_every_bad_sequence_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as info:
        encoding.check([NamedSequence("a", ""), NamedSequence("b", "ACXT"), NamedSequence("c", "A" * 20)], 10, False)
    assert [v.field for v in info.value.violations] == [
        "sequences[0].bases",
        "sequences[1].bases",
        "sequences[2].bases",
    ]
    assert "is empty" in info.value.violations[0].description


def test_strand_modes_combine_forward_and_reverse_logits() -> None:
    batch = encoding.one_hot(["AAC", "GTT"])
    both = strands.with_reverse(batch, "max")
    assert encoding.decode(both) == ["AAC", "GTT", "GTT", "AAC"]
    logits = np.array([[1.0], [4.0], [3.0], [-2.0]], dtype=np.float32)
    np.testing.assert_array_equal(strands.combine(logits, "max"), [[3.0], [4.0]])
    np.testing.assert_array_equal(strands.combine(logits, "mean"), [[2.0], [1.0]])
    assert strands.with_reverse(batch, "forward") is batch
    np.testing.assert_allclose(strands.sigmoid(np.array([0.0, 2.0])), [0.5, 0.8807971], rtol=1e-6)


def test_sequences_of_exactly_the_model_length_are_checked_together() -> None:
    """The vectorised path (all sequences already the model's length) keeps per-sequence errors."""
    good = [NamedSequence(f"s{i}", "ACGTN"[i % 5] * 6) for i in range(5)]
    assert encoding.check(good, 6, crop=False) == [s.bases for s in good]
    with pytest.raises(InvalidArgument) as info:
        encoding.check([*good, NamedSequence("bad", "ACGUAC")], 6, crop=False)
    [violation] = info.value.violations
    assert violation.field == "sequences[5].bases"
    assert "'bad': invalid character 'U' at position 3" in violation.description


def test_one_hot_rows_for_every_code() -> None:
    batch = encoding.one_hot(["ACGTN", "acgtn"])
    expected = np.vstack([np.eye(4, dtype=np.float32), np.full((1, 4), 0.25, dtype=np.float32)])
    assert batch.dtype == np.float32
    assert batch.shape == (2, 5, 4)
    np.testing.assert_array_equal(batch[0], expected)
    np.testing.assert_array_equal(batch[1], expected)


def test_encode_checks_fits_and_one_hots_in_one_call() -> None:
    """encode = one_hot(check(...)) on the fast path (every sequence the model's length) and on the
    slow one (padding), and names the bad sequence like check does."""
    same = [NamedSequence("a", "ACGTN"), NamedSequence("b", "acgta")]
    np.testing.assert_array_equal(encoding.encode(same, 5, crop=False), encoding.one_hot(["ACGTN", "acgta"]))
    short = [NamedSequence("a", "ACG"), NamedSequence("b", "ACGTA")]
    np.testing.assert_array_equal(encoding.encode(short, 5, crop=False), encoding.one_hot(["NACGN", "ACGTA"]))
    with pytest.raises(InvalidArgument) as info:
        encoding.encode([*same, NamedSequence("c", "ACGXA")], 5, crop=False)
    [violation] = info.value.violations
    assert violation.field == "sequences[2].bases"
    assert "'c': invalid character 'X' at position 3" in violation.description

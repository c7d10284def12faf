"""``checked_dense``: the value rules and the dense layout per row range on several cores give the
same matrix and the same error messages as the whole-matrix ``check`` + ``aligned_dense``."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.embedding.counts import CsrCounts, aligned_dense, check, check_structure, checked_dense
from genoserve.embedding.genes import align
from genoserve.embedding.request import default_ids

MODEL = [f"g{i}" for i in range(30)]


def csr_of(dense: np.ndarray) -> CsrCounts:
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    return CsrCounts(indptr.astype(np.int64), cols.astype(np.int32), dense[rows, cols], dense.shape[1])


def counts(n_cells: int = 1500, seed: int = 3) -> np.ndarray:
    dense = np.random.default_rng(seed).poisson(0.8, size=(n_cells, 40)).astype(np.float32)
    dense[[0, 700, n_cells - 1]] = 0  # empty cells, at a range's edge too
    return dense


#: 25 of the model's genes shuffled (5 missing) among 15 it does not know.
GENES = list(np.random.default_rng(1).permutation([MODEL[i] for i in range(25)] + [f"x{i}" for i in range(15)]))


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
@pytest.mark.parametrize("log1p", [False, True])
def test_same_matrix_as_the_whole_matrix_layout(parts: int, log1p: bool) -> None:
    dense = counts()
    for genes in (MODEL + [f"x{i}" for i in range(10)], GENES):
        alignment = align(genes, MODEL, min_overlap=0.3)
        for matrix in (csr_of(dense), csr_of(dense.astype(np.uint16)), dense):
            assert check_structure(matrix, 40) == 1500
            got = checked_dense(matrix, alignment, False, log1p, parts=parts)
            assert got.dtype == np.float32
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, aligned_dense(matrix, alignment, log1p))


def test_repeated_entries_are_summed_before_log1p_in_every_range() -> None:
    indptr = np.array([0, 3] + [3 + 2 * k for k in range(1, 1200)])
    indices = np.concatenate([[1, 1, 0], np.tile([5, 5], 1199)])
    data = np.ones(indices.size, dtype=np.float32)
    matrix = CsrCounts(indptr, indices.astype(np.int32), data, 30)
    got = checked_dense(matrix, align(MODEL, MODEL), False, log1p=True, parts=3)
    np.testing.assert_allclose(got[0, :2], np.log1p([1, 2]), rtol=1e-6)
    np.testing.assert_allclose(got[1:, 5], np.log1p(2), rtol=1e-6)


@pytest.mark.parametrize(("value", "rule"), [(-1.0, "must be >= 0"), (np.nan, "finite"), (2.5, "whole numbers")])
def test_bad_values_give_the_whole_matrix_message_from_any_range(value: float, rule: str) -> None:
    """A bad value in the third range (and another in the last): the message names the same first
    bad cell, count and value index as the whole-matrix check, numbered from ``first_cell``."""
    dense = counts()
    dense[1100, 3] = value
    dense[1400, 2] = value
    matrix = csr_of(dense)
    alignment = align(MODEL + [f"x{i}" for i in range(10)], MODEL)
    with pytest.raises(InvalidArgument) as whole:
        check(matrix, 40, allow_non_integer=False, first_cell=10)
    with pytest.raises(InvalidArgument) as ranged:
        checked_dense(matrix, alignment, False, first_cell=10, parts=4)
    assert rule in whole.value.message
    assert "first at cell 1110" in whole.value.message
    assert ranged.value.message == whole.value.message
    assert ranged.value.violations[0].field == "counts.csr.data"


def test_non_integers_pass_when_the_data_are_not_raw() -> None:
    dense = counts() / 3
    got = checked_dense(csr_of(dense), align(MODEL + [f"x{i}" for i in range(10)], MODEL), True, parts=2)
    np.testing.assert_allclose(got, dense[:, :30], rtol=1e-6)


def test_default_ids_count_from_the_first_cell() -> None:
    assert default_ids(0, 3) == ("cell0", "cell1", "cell2")
    assert default_ids(4096, 2) == ("cell4096", "cell4097")


@pytest.mark.parametrize("row", [0, 749, 750, 1499])
def test_one_repeated_or_unsorted_row_in_any_range_is_still_summed_before_log1p(row: int) -> None:
    """Rows with strictly rising columns take log1p on the values before the layout; one row with a
    column given twice (or out of order) anywhere sends its range down the dense path."""
    dense = counts()
    dense[row, :6] = [1, 2, 0, 3, 0, 4]
    matrix = csr_of(dense)
    alignment = align(MODEL + [f"x{i}" for i in range(10)], MODEL)
    expected = aligned_dense(matrix, alignment, log1p=True)
    start = int(matrix.indptr[row])
    repeated = matrix.indices.copy()
    repeated[start + 1] = repeated[start]  # columns 0, 0, 3, 5: counts 1 + 2 in column 0
    twice = CsrCounts(matrix.indptr, repeated, matrix.data, 40)
    got = checked_dense(twice, alignment, False, log1p=True, parts=2)
    np.testing.assert_allclose(got[row, :6], np.log1p([3, 0, 0, 3, 0, 4]), rtol=1e-6)
    np.testing.assert_array_equal(np.delete(got, row, axis=0), np.delete(expected, row, axis=0))
    unsorted = matrix.indices.copy()
    unsorted[[start, start + 1]] = unsorted[[start + 1, start]]  # columns 1, 0, 3, 5
    got = checked_dense(CsrCounts(matrix.indptr, unsorted, matrix.data[[*range(start), start + 1, start,
                                                                          *range(start + 2, matrix.data.size)]], 40),
                        alignment, False, log1p=True, parts=2)  # fmt: skip
    np.testing.assert_array_equal(got, expected)

"""Gene alignment by name, count validation, CSR handling and batch one-hot."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.embedding.batches import one_hot
from genoserve.embedding.counts import CsrCounts, aligned_dense, cell_ids, check
from genoserve.embedding.genes import align

MODEL = ["g0", "g1", "g2", "g3", "g4"]


def csr_of(dense: np.ndarray) -> CsrCounts:
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    return CsrCounts(indptr.astype(np.int64), cols.astype(np.int32), dense[rows, cols], dense.shape[1])


def test_reordered_genes_give_the_model_order() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(6, 5)).astype(np.float32)
    order = [3, 0, 4, 1, 2]
    alignment = align([MODEL[i] for i in order], MODEL)
    assert alignment.overlap == 1.0
    assert alignment.extra == 0
    assert not alignment.missing
    shuffled = counts[:, order]
    np.testing.assert_array_equal(aligned_dense(shuffled, alignment), counts)
    np.testing.assert_array_equal(aligned_dense(csr_of(shuffled), alignment), counts)


def test_identity_alignment_is_detected() -> None:
    assert align(MODEL, MODEL).identity
    assert not align(MODEL[::-1], MODEL).identity


def test_missing_genes_are_zero_filled_and_extras_dropped() -> None:
    data_genes = ["g1", "extra1", "g0", "g2", "g3", "extra2"]  # g4 missing
    counts = np.arange(12, dtype=np.float32).reshape(2, 6) + 1
    alignment = align(data_genes, MODEL, min_overlap=0.8)
    assert alignment.matched == 4
    assert alignment.extra == 2
    assert alignment.missing == ("g4",)
    assert alignment.overlap == pytest.approx(0.8)
    expected = np.stack([counts[:, 2], counts[:, 0], counts[:, 3], counts[:, 4], np.zeros(2)], axis=1)
    np.testing.assert_array_equal(aligned_dense(counts, alignment), expected)
    np.testing.assert_array_equal(aligned_dense(csr_of(counts), alignment), expected)


def test_overlap_below_threshold_is_refused_with_the_overlap() -> None:
    with pytest.raises(InvalidArgument) as caught:
        align(["g0", "g1", "g2", "zz"], MODEL)
    assert "gene overlap 0.600" in caught.value.message
    assert "below min_gene_overlap 0.8" in caught.value.message
    assert caught.value.violations[0].field == "counts.gene_names"
    assert align(["g0", "g1", "g2", "zz"], MODEL, min_overlap=0.5).matched == 3


def test_duplicate_and_empty_gene_names_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="'g1' appears at columns 1 and 2"):
        align(["g0", "g1", "g1"], MODEL)
    with pytest.raises(InvalidArgument, match="empty"):
        align(["g0", ""], MODEL)
    with pytest.raises(InvalidArgument, match="min_gene_overlap"):
        align(MODEL, MODEL, min_overlap=1.5)


def test_duplicate_csr_entries_are_summed() -> None:
    matrix = CsrCounts(np.array([0, 3]), np.array([1, 1, 0]), np.array([2.0, 3.0, 1.0]), 5)
    assert check(matrix, 5, allow_non_integer=False) == 1
    np.testing.assert_array_equal(aligned_dense(matrix, align(MODEL, MODEL)), [[1, 5, 0, 0, 0]])


def test_log1p_layout_is_log1p_of_the_plain_one_and_leaves_the_callers_array() -> None:
    """``aligned_dense(..., log1p=True)`` (for sessions whose graph had its log1p folded out): the
    log1p of the summed counts, for every input form; a dense array the caller passed is not
    overwritten."""
    rng = np.random.default_rng(5)
    dense = rng.poisson(3.0, size=(8, 5)).astype(np.float32)
    duplicates = CsrCounts(np.array([0, 3]), np.array([1, 1, 0]), np.array([2.0, 3.0, 1.0]), 5)
    identity, shuffled = align(MODEL, MODEL), align([MODEL[i] for i in (4, 2, 0, 1, 3)], MODEL)
    cases = [(dense, identity), (csr_of(dense), identity), (dense[:, [4, 2, 0, 1, 3]], shuffled),
             (csr_of(dense[:, [4, 2, 0, 1, 3]]), shuffled), (duplicates, identity)]  # fmt: skip
    for counts, alignment in cases:
        before = np.array(counts, copy=True) if isinstance(counts, np.ndarray) else None
        np.testing.assert_allclose(
            aligned_dense(counts, alignment, log1p=True), np.log1p(aligned_dense(counts, alignment)), rtol=1e-6
        )
        if before is not None:
            np.testing.assert_array_equal(counts, before)
    np.testing.assert_allclose(aligned_dense(duplicates, identity, log1p=True), np.log1p([[1, 5, 0, 0, 0]]), rtol=1e-6)


def test_csr_alignment_matches_dense_with_empty_rows_dropped_genes_and_int_data() -> None:
    rng = np.random.default_rng(4)
    dense = rng.poisson(0.7, size=(40, 9)).astype(np.int32)
    dense[[3, 17]] = 0  # empty cells
    genes = ["x0", "g3", "g0", "x1", "g1", "x2", "g4", "x3", "x4"]  # g2 missing, five extras
    alignment = align(genes, MODEL, min_overlap=0.5)
    expected = aligned_dense(dense.astype(np.float32), alignment)
    got = aligned_dense(csr_of(dense), alignment)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(expected[:, 2], 0)


@pytest.mark.parametrize(
    ("matrix", "field", "rule"),
    [
        (CsrCounts(np.array([1, 2]), np.array([0]), np.array([1.0]), 5), "counts.csr.indptr", "must start at 0"),
        (CsrCounts(np.array([0, 2, 1]), np.array([0]), np.array([1.0]), 5), "counts.csr.indptr", "non-decreasing"),
        (CsrCounts(np.array([0, 2]), np.array([0]), np.array([1.0]), 5), "counts.csr.indptr", "last entry 2"),
        (CsrCounts(np.array([0, 1]), np.array([0]), np.array([1.0, 2.0]), 5), "counts.csr.data", "must match"),
        (CsrCounts(np.array([0, 1]), np.array([7]), np.array([1.0]), 5), "counts.csr.indices", "outside [0, 5)"),
        (CsrCounts(np.array([0, 1]), np.array([-1]), np.array([1.0]), 5), "counts.csr.indices", "outside"),
        (CsrCounts(np.array([0.0, 1.0]), np.array([0]), np.array([1.0]), 5), "counts.csr.indptr", "integer"),
        (CsrCounts(np.array([0]), np.array([], int), np.array([]), 5), "counts.csr.indptr", "at least one cell"),
    ],
)
def test_csr_structure_rules(matrix: CsrCounts, field: str, rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check(matrix, 5, allow_non_integer=False)
    assert caught.value.violations[0].field == field
    assert rule in caught.value.message


@pytest.mark.parametrize(
    ("value", "rule"),
    [(-1.0, "must be >= 0"), (np.nan, "finite"), (np.inf, "finite"), (1.5, "whole numbers")],
)
def test_bad_values_are_refused_dense_and_csr(value: float, rule: str) -> None:
    dense = np.ones((3, 5), dtype=np.float32)
    dense[2, 4] = value
    with pytest.raises(InvalidArgument) as caught:
        check(dense, 5, allow_non_integer=False)
    assert rule in caught.value.message
    assert "cell 2, gene column 4" in caught.value.message
    with pytest.raises(InvalidArgument, match=rule):
        check(csr_of(dense), 5, allow_non_integer=False)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    ("value", "rule"),
    [(-1.0, "must be >= 0"), (-np.inf, "finite"), (np.nan, "finite"), (np.inf, "finite"), (0.5, "whole numbers")],
)
def test_every_float_width_is_checked(dtype: type, value: float, rule: str) -> None:
    values = np.array([3.0, value, 1.0], dtype=dtype)
    with pytest.raises(InvalidArgument, match=rule):
        check(CsrCounts(np.array([0, 3]), np.array([0, 1, 2]), values, 5), 5, allow_non_integer=False)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_signed_zero_and_whole_numbers_past_the_exact_range_are_counts(dtype: type) -> None:
    # -0.0 is a count of zero; 2**30 is a whole number in every float width that holds it.
    big = 2.0**14 if dtype is np.float16 else 2.0**30
    values = np.array([-0.0, big, 1.0], dtype=dtype)
    assert check(CsrCounts(np.array([0, 3]), np.array([0, 1, 2]), values, 5), 5, allow_non_integer=False) == 1


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
@pytest.mark.parametrize(("value", "rule"), [(np.nan, "finite"), (-2.0, ">= 0"), (0.5, "whole numbers")])
def test_values_in_the_other_byte_order_are_checked(dtype: str, value: float, rule: str) -> None:
    # -2.0 big-endian read as a little-endian integer is small (0xC0): a bit-level shortcut that
    # ignored the byte order would let it through.
    values = np.array([3.0, value, 1.0], dtype=dtype)
    with pytest.raises(InvalidArgument, match=rule):
        check(CsrCounts(np.array([0, 3]), np.array([0, 1, 2], dtype=">i4"), values, 5), 5, allow_non_integer=False)
    indices = np.array([0, 0, 256], dtype=">i2")  # read little-endian: 0, 0, 1
    with pytest.raises(InvalidArgument, match="column index 256 is outside"):
        check(CsrCounts(np.array([0, 3]), indices, np.ones(3), 5), 5, allow_non_integer=False)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64])
def test_column_indices_of_every_integer_type_are_range_checked(dtype: type) -> None:
    ok = CsrCounts(np.array([0, 2]), np.array([0, 4], dtype=dtype), np.array([1.0, 1.0]), 5)
    assert check(ok, 5, allow_non_integer=False) == 1
    bad = [-3, 5] if np.dtype(dtype).kind == "i" else [5]
    for index in bad:
        matrix = CsrCounts(np.array([0, 2]), np.array([0, index], dtype=dtype), np.array([1.0, 1.0]), 5)
        with pytest.raises(InvalidArgument, match=f"column index {index} is outside"):
            check(matrix, 5, allow_non_integer=False)


def test_non_integer_allowed_when_not_raw_but_negative_never() -> None:
    dense = np.full((2, 5), 0.5, dtype=np.float32)
    assert check(dense, 5, allow_non_integer=True) == 2
    dense[0, 0] = -0.5
    with pytest.raises(InvalidArgument, match=">= 0"):
        check(dense, 5, allow_non_integer=True)
    with pytest.raises(InvalidArgument, match="counts must be >= 0"):
        check(np.array([[1, -2, 0, 0, 0]], dtype=np.int32), 5, allow_non_integer=False)


def test_dense_shape_rules() -> None:
    with pytest.raises(InvalidArgument, match="4 columns but 5 gene names"):
        check(np.zeros((2, 4), np.float32), 5, False)
    with pytest.raises(InvalidArgument, match="2-D"):
        check(np.zeros(5, np.float32), 5, False)


def test_csr_row_slices() -> None:
    dense = np.random.default_rng(1).poisson(1.0, size=(10, 5)).astype(np.float32)
    part = csr_of(dense).rows(3, 7)
    np.testing.assert_array_equal(aligned_dense(part, align(MODEL, MODEL)), dense[3:7])


def test_cell_ids_default_and_count_rule() -> None:
    assert cell_ids([], 2) == ["cell0", "cell1"]
    with pytest.raises(InvalidArgument, match="3 ids for 2 cells"):
        cell_ids(["a", "b", "c"], 2)


def test_batch_one_hot() -> None:
    got = one_hot(["b", "a", "b"], ["a", "b", "c"], 3)
    np.testing.assert_array_equal(got, [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(one_hot(["c"], ["a", "b", "c"], 2), [[0, 0, 1], [0, 0, 1]])


def test_batch_label_rules() -> None:
    with pytest.raises(InvalidArgument, match=r"unknown batch label 'x'; known batches: \['a', 'b'\]"):
        one_hot(["a", "x"], ["a", "b"], 2)
    with pytest.raises(InvalidArgument, match="needs a batch label"):
        one_hot([], ["a", "b"], 2)
    with pytest.raises(InvalidArgument, match="takes no batch covariate"):
        one_hot(["a"], [], 2)
    with pytest.raises(InvalidArgument, match="2 labels for 3 cells"):
        one_hot(["a", "b"], ["a", "b"], 3)

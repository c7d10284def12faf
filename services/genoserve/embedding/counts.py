"""Count matrices: CSR or dense cells x genes, validated, then laid out in the model's gene order.

Rules (each broken one is an InvalidArgument naming the field): CSR structure (indptr length and
monotonicity, indices in range, matching lengths); values finite and >= 0; integers unless the
caller says the data are not raw counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from genoserve.core import parallel
from genoserve.core.errors import InvalidArgument
from genoserve.embedding.genes import GeneAlignment

Array = np.ndarray[Any, Any]

_NUMERIC = "biufc"


@dataclass(frozen=True)
class CsrCounts:
    """Cells x genes in CSR form: ``indptr`` int [n_cells + 1], ``indices`` int [nnz] (gene
    columns), ``data`` numeric [nnz]. Duplicate column indices within a row are summed."""

    indptr: Array
    indices: Array
    data: Array
    n_genes: int

    @property
    def n_cells(self) -> int:
        return int(self.indptr.size) - 1

    def rows(self, start: int, stop: int) -> CsrCounts:
        """Cells [start, stop) as their own CSR matrix (indptr rebased to 0)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return CsrCounts(self.indptr[start : stop + 1] - lo, self.indices[lo:hi], self.data[lo:hi], self.n_genes)


Counts = CsrCounts | Array

try:  # the C++ loop behind scipy's CSR toarray (scipy >= 0.14); without it, no row ranges
    from scipy.sparse._sparsetools import csr_todense as _csr_todense
except ImportError:  # pragma: no cover - a scipy that moved it
    _csr_todense = None


def check_csr(matrix: CsrCounts, field: str = "counts.csr") -> None:
    """Structure of a CSR matrix; InvalidArgument naming the broken part."""
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    for name, array in (("indptr", indptr), ("indices", indices)):
        if array.ndim != 1 or array.dtype.kind not in "iu":
            rule = f"must be a 1-D integer array, got {array.dtype} {array.shape}"
            raise InvalidArgument.field(f"{field}.{name}", rule)
    if data.ndim != 1 or data.dtype.kind not in _NUMERIC or data.dtype.kind == "c":
        raise InvalidArgument.field(f"{field}.data", f"must be a 1-D real array, got {data.dtype} {data.shape}")
    if indptr.size < 2:
        raise InvalidArgument.field(f"{field}.indptr", "needs n_cells + 1 >= 2 entries (at least one cell)")
    if int(indptr[0]) != 0:
        raise InvalidArgument.field(f"{field}.indptr", f"must start at 0, got {int(indptr[0])}")
    steps = np.diff(indptr)
    if steps.size and int(steps.min()) < 0:
        row = int(np.argmax(steps < 0))
        raise InvalidArgument.field(f"{field}.indptr", f"must be non-decreasing; decreases after row {row}")
    if indices.size != data.size:
        raise InvalidArgument.field(
            f"{field}.data", f"has {data.size} values but indices has {indices.size}; they must match"
        )
    if int(indptr[-1]) != indices.size:
        raise InvalidArgument.field(
            f"{field}.indptr", f"last entry {int(indptr[-1])} must equal the number of values {indices.size}"
        )
    if indices.size and not _below(indices, matrix.n_genes):
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= matrix.n_genes:
            bad = lo if lo < 0 else hi
            raise InvalidArgument.field(
                f"{field}.indices", f"column index {bad} is outside [0, {matrix.n_genes}) (one per gene name)"
            )


def check_values(
    values: Array,
    allow_non_integer: bool,
    field: str,
    n_cols: int | None = None,
    indptr: Array | None = None,
    first_cell: int = 0,
) -> None:
    """Values must be finite and >= 0, and whole numbers unless ``allow_non_integer``.

    The message names the first bad cell (numbered from ``first_cell``): dense arrays give
    ``n_cols``, CSR values their ``indptr``.
    """
    # When every value is a finite float in [0, 2**(significand bits + 1)), only whole numbers are
    # left to check.
    quick = values.dtype.kind == "f" and values.size and _below(values, _EXACT_INTEGERS[values.dtype.itemsize])
    if quick and (allow_non_integer or not (values != np.floor(values)).any()):
        return
    where = _Where(n_cols, indptr, first_cell)
    if values.dtype.kind in "iu":
        if values.dtype.kind == "i" and values.size and int(values.min()) < 0:
            raise InvalidArgument.field(field, f"counts must be >= 0; {where(values < 0)}")
        return
    finite = np.isfinite(values)
    if not finite.all():
        raise InvalidArgument.field(field, f"counts must be finite (no NaN or inf); {where(~finite)}")
    if values.size and float(values.min()) < 0:
        raise InvalidArgument.field(field, f"counts must be >= 0; {where(values < 0)}")
    if not allow_non_integer:
        fractional = values != np.floor(values)
        if fractional.any():
            raise InvalidArgument.field(
                field,
                f"raw counts must be whole numbers; {where(fractional)} (set not_raw_counts "
                "for normalised data, though the model was trained on raw counts)",
            )


#: The IEEE 754 bit pattern of 2**(significand bits + 1) by float size: below it (compared as
#: unsigned integers) lie exactly the finite floats in [0, 2**(bits + 1)), +0 included, -0,
#: NaN and infinities excluded (IEEE 754-2008, 3.4: sign, biased exponent, trailing significand).
_EXACT_INTEGERS = {2: np.float16(2.0**11), 4: np.float32(2.0**24), 8: np.float64(2.0**53)}


def _below(values: Array, bound: Any) -> bool:
    """True when every value is in [0, bound), in one pass: integers (and non-negative floats)
    keep their order when their bits are read as unsigned integers, while negative ones (and
    NaN, for floats) turn into larger numbers. False when unsure (the caller then looks closer)."""
    if not values.dtype.isnative:  # bits in the other byte order do not keep the order
        return False
    unsigned = np.dtype(f"u{values.dtype.itemsize}")
    if values.dtype.kind == "f":
        limit = int(np.asarray(bound, dtype=values.dtype).view(unsigned))
    elif int(bound) > np.iinfo(unsigned).max:
        return False
    else:
        limit = int(bound)
    return bool(values.view(unsigned).max() < limit)


class _Where:
    def __init__(self, n_cols: int | None, indptr: Array | None, first_cell: int) -> None:
        self.n_cols, self.indptr, self.first_cell = n_cols, indptr, first_cell

    def __call__(self, mask: Array) -> str:
        flat = int(np.argmax(mask.ravel()))
        count = int(mask.sum())
        if self.n_cols:
            cell, column = divmod(flat, self.n_cols)
            return f"{count} bad value(s), first at cell {self.first_cell + cell}, gene column {column}"
        if self.indptr is not None:
            cell = int(np.searchsorted(self.indptr, flat, side="right")) - 1
            return f"{count} bad value(s), first at cell {self.first_cell + cell} (value index {flat})"
        return f"{count} bad value(s), first at value index {flat}"


def check_structure(counts: Counts, n_genes: int, field: str = "counts") -> int:
    """The matrix's shape (CSR structure, or dense rank and width) without its values; n_cells."""
    if isinstance(counts, CsrCounts):
        check_csr(counts, f"{field}.csr")
        return counts.n_cells
    if counts.ndim != 2 or counts.dtype.kind not in "biuf":
        raise InvalidArgument.field(
            f"{field}.dense", f"must be a 2-D real array [n_cells, n_genes], got {counts.dtype} {list(counts.shape)}"
        )
    if counts.shape[1] != n_genes:
        raise InvalidArgument.field(
            f"{field}.dense", f"has {counts.shape[1]} columns but {n_genes} gene names; they must match"
        )
    if counts.shape[0] < 1:
        raise InvalidArgument.field(f"{field}.dense", "needs at least one cell")
    return int(counts.shape[0])


def check_values_of(counts: Counts, allow_non_integer: bool, field: str = "counts", first_cell: int = 0) -> None:
    """``check_values`` on a matrix whose structure was checked (``check_structure``)."""
    if isinstance(counts, CsrCounts):
        check_values(counts.data, allow_non_integer, f"{field}.csr.data", indptr=counts.indptr, first_cell=first_cell)
    else:
        check_values(counts, allow_non_integer, f"{field}.dense", counts.shape[1], first_cell=first_cell)


def check(counts: Counts, n_genes: int, allow_non_integer: bool, field: str = "counts", first_cell: int = 0) -> int:
    """Validate a CSR or dense [n_cells, n_genes] matrix; returns n_cells. Cells in messages are
    numbered from ``first_cell``."""
    n_cells = check_structure(counts, n_genes, field)
    check_values_of(counts, allow_non_integer, field, first_cell)
    return n_cells


#: Fewest cells per core when a CSR matrix is checked and laid out on several: below it a thread
#: hand-off costs more than it saves.
MIN_ROWS_PER_PART = 512


def checked_dense(
    counts: Counts,
    alignment: GeneAlignment,
    allow_non_integer: bool,
    log1p: bool = False,
    field: str = "counts",
    first_cell: int = 0,
    parts: int | None = None,
) -> Array:
    """``check``'s value rules, then ``aligned_dense``. A CSR matrix is done per row range on the
    process's usable cores (``genoserve.core.parallel``; ``parts`` overrides how many): each
    range's values checked, laid out into its rows of the result and log1p taken, all while in
    cache. A bad value is reported as ``check`` reports it (the message comes from checking the
    whole matrix). The structure must have been checked (``check_structure``): the layout trusts it."""
    if not isinstance(counts, CsrCounts) or _csr_todense is None:
        parts = 1
    elif parts is None:
        parts = parallel.parts_for(counts.n_cells, MIN_ROWS_PER_PART)
    if parts <= 1:
        check_values_of(counts, allow_non_integer, field, first_cell)
        return aligned_dense(counts, alignment, log1p)
    assert isinstance(counts, CsrCounts)
    out = np.empty((counts.n_cells, alignment.n_model_genes), dtype=np.float32)

    def work(lo: int, hi: int) -> None:
        part = counts.rows(lo, hi)
        check_values(part.data, allow_non_integer, f"{field}.csr.data")  # its message is not kept (below)
        rows = out[lo:hi]
        rows.fill(0.0)
        if log1p and _distinct_columns(part):  # log1p of each value is log1p of each entry's sum
            logged = np.log1p(part.data, dtype=np.float32)
            _layout(CsrCounts(part.indptr, part.indices, logged, part.n_genes), alignment, rows, own_data=True)
        else:
            _layout(part, alignment, rows)
            if log1p:
                np.log1p(rows, out=rows)

    try:
        parallel.over_ranges(work, counts.n_cells, parts)
    except InvalidArgument:
        # A range counts only its own bad values: the whole matrix's check words the message.
        check_values_of(counts, allow_non_integer, field, first_cell)
        raise
    return out


def _csr_arrays(counts: CsrCounts, alignment: GeneAlignment, own_data: bool = False) -> tuple[Array, Array, Array]:
    """(indptr, indices, data) with each column renamed to its model column and float32 values;
    both index arrays int32 when the values fit (scipy's choice: no int64 copies inside).
    ``own_data``: ``counts.data`` is a float32 array made here, free to change in place."""
    data = counts.data.astype(np.float32, copy=False)
    own_data = own_data or data is not counts.data
    indptr = np.asarray(counts.indptr)
    if alignment.identity:
        indices = counts.indices
    else:
        # take(mode="wrap") skips fancy indexing's bounds checks (indices were checked in range).
        indices = alignment.column_map32.take(counts.indices, mode="wrap")
        dropped = indices < 0
        if dropped.any():
            if not own_data:
                data = data.copy()
            data[dropped] = 0.0
            np.maximum(indices, 0, out=indices)
    index_dtype = np.int32 if data.size < 2**31 else np.int64
    return indptr.astype(index_dtype, copy=False), indices.astype(index_dtype, copy=False), data


def _distinct_columns(counts: CsrCounts) -> bool:
    """No column twice within a row, known cheaply: each row's column indices strictly increase
    (scipy's canonical form, what .h5ad writers and scipy itself produce). False when unsure."""
    indices = counts.indices
    if indices.size < 2:
        return True
    rising = indices[1:] > indices[:-1]
    starts = counts.indptr[1:-1]  # rows begin here: a fall across a row boundary is allowed
    rising[starts[(starts > 0) & (starts < indices.size)] - 1] = True
    return bool(rising.all())


def _layout(counts: CsrCounts, alignment: GeneAlignment, out: Array, own_data: bool = False) -> None:
    """Add ``counts`` (a row range, its indptr from 0) into the zeroed float32 rows ``out`` with
    scipy's C++ ``csr_todense`` itself: ``toarray`` would first copy a range's index and value
    arrays (scipy prunes arrays that view less than half of their base). ``own_data``: as for
    ``_csr_arrays``."""
    assert _csr_todense is not None
    indptr, indices, data = _csr_arrays(counts, alignment, own_data)
    _csr_todense(counts.n_cells, alignment.n_model_genes, indptr, indices, data, out)


def aligned_dense(counts: Counts, alignment: GeneAlignment, log1p: bool = False) -> Array:
    """Counts laid out as the model's genes: float32 [n_cells, n_model_genes], missing genes 0.

    CSR input: each column renamed to its model column, then scipy's ``toarray`` (one C++ pass;
    repeated (cell, gene) entries are summed, as scipy does). Values of genes the model lacks are
    zeroed and sent to column 0 (adding 0 there changes nothing), which is cheaper than removing
    them from the CSR arrays or slicing a scratch column off the dense result.

    ``log1p``: lay out log1p(counts) instead (the encoder's first step, for a session whose graph
    had it folded out: ``genoserve.runtime.prologue``), taken in place on the new dense array."""
    width = alignment.n_model_genes
    if isinstance(counts, CsrCounts):
        indptr, indices, data = _csr_arrays(counts, alignment)
        matrix = sp.csr_matrix((data, indices, indptr), shape=(counts.n_cells, width), copy=False)
        dense: Array = matrix.toarray()
        if log1p:  # after the sum of repeated entries (log1p of a sum is not the sum of log1p's)
            np.log1p(dense, out=dense)
        return dense
    if alignment.identity:
        same = np.ascontiguousarray(counts, dtype=np.float32)
        return np.log1p(same) if log1p else same  # never in place: it may be the caller's array
    out = np.zeros((counts.shape[0], width), dtype=np.float32)
    out[:, alignment.target] = counts[:, alignment.source]
    if log1p:
        np.log1p(out, out=out)
    return out


def cell_ids(ids: Sequence[str], n_cells: int, field: str = "counts.cell_ids") -> list[str]:
    """The given ids (one per cell) or ``cell0..`` when none are given."""
    if not ids:
        return [f"cell{i}" for i in range(n_cells)]
    if len(ids) != n_cells:
        raise InvalidArgument.field(field, f"has {len(ids)} ids for {n_cells} cells; give one per cell or none")
    return list(ids)

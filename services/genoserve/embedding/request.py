"""From a count matrix with gene names to the model's inputs: validate, align, one-hot batches."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.core.errors import InvalidArgument
from genoserve.embedding import batches, contract
from genoserve.embedding.contract import EmbeddingContract
from genoserve.embedding.counts import Counts, CsrCounts, check_structure, checked_dense
from genoserve.embedding.genes import DEFAULT_MIN_OVERLAP, GeneAlignment, align

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Prepared:
    """``inputs``: the model's inputs (``counts`` float32 [n, G], ``batch`` float32 [n, K] if any);
    ``log1p_applied``: the inputs given as log1p (pass to the model's ``infer``)."""

    inputs: dict[str, Array]
    alignment: GeneAlignment
    cell_ids: list[str]
    log1p_applied: frozenset[str] = frozenset()

    @property
    def n_cells(self) -> int:
        return int(self.inputs[contract.COUNTS].shape[0])


#: Default ids are kept for requests up to this many cells (pipelines send chunks of one size).
CACHED_IDS = 65_536


def default_ids(first: int, n: int) -> tuple[str, ...]:
    """``cell<first>`` .. ``cell<first + n - 1>``, the ids of cells a request leaves unnamed."""
    return _cached_ids(first, n) if n <= CACHED_IDS else _ids(first, n)


def _ids(first: int, n: int) -> tuple[str, ...]:
    return tuple(f"cell{i}" for i in range(first, first + n))


_cached_ids = functools.lru_cache(maxsize=8)(_ids)


def check_size(
    n_cells: int, n_model_genes: int, max_cells: int | None, max_dense_values: int | None, field: str = "counts"
) -> None:
    """An online request's size (settings ``embedding.max_cells`` and ``embedding.max_dense_values``;
    None: no limit), checked before the matrix is laid out dense (n_cells x n_model_genes float32)."""
    hint = "send fewer cells per request (EmbedStream takes a matrix in chunks)"
    if max_cells is not None and n_cells > max_cells:
        raise InvalidArgument.field(
            field, f"{n_cells} cells exceeds embedding.max_cells = {max_cells} per request; {hint}"
        )
    values = n_cells * n_model_genes
    if max_dense_values is not None and values > max_dense_values:
        raise InvalidArgument.field(
            field,
            f"{n_cells} cells x {n_model_genes} model genes = {values} dense values exceeds "
            f"embedding.max_dense_values = {max_dense_values} per request; {hint}",
        )


def prepare(
    model: EmbeddingContract,
    gene_names: Sequence[str],
    counts: Counts,
    cell_ids: Sequence[str] = (),
    batch_labels: Sequence[str] = (),
    min_overlap: float = 0.0,
    not_raw_counts: bool = False,
    first_cell: int = 0,
    alignment: GeneAlignment | None = None,
    log1p_inputs: frozenset[str] = frozenset(),
    max_cells: int | None = None,
    max_dense_values: int | None = None,
) -> Prepared:
    """Every request rule, in order: genes (names, overlap), matrix (structure, values), cell ids,
    batch labels. ``min_overlap`` 0 means the default (0.8). ``first_cell`` numbers default ids
    (``cell<first_cell + i>``); pass a previous ``alignment`` to reuse it for the same genes.
    ``log1p_inputs``: the model's (``LoadedModel.log1p_inputs``); when it holds ``counts``, they
    are laid out as log1p(counts). ``max_cells``, ``max_dense_values``: see ``check_size``."""
    field = "counts.csr" if isinstance(counts, CsrCounts) else "counts.dense"
    if isinstance(counts, CsrCounts) and counts.n_genes != len(gene_names):
        raise InvalidArgument.field(field, "gene count mismatch")  # cannot happen through the codec
    if alignment is None:
        alignment = align(gene_names, model.genes, min_overlap or DEFAULT_MIN_OVERLAP)
    n_cells = check_structure(counts, len(gene_names))
    check_size(n_cells, alignment.n_model_genes, max_cells, max_dense_values)
    log1p = contract.COUNTS in log1p_inputs
    inputs = {contract.COUNTS: checked_dense(counts, alignment, not_raw_counts, log1p, first_cell=first_cell)}
    if cell_ids and len(cell_ids) != n_cells:
        raise InvalidArgument.field(
            "counts.cell_ids", f"has {len(cell_ids)} ids for {n_cells} cells; give one per cell or none"
        )
    ids = list(cell_ids) if cell_ids else list(default_ids(first_cell, n_cells))
    if model.takes_batch or batch_labels:
        inputs[contract.BATCH] = batches.one_hot(batch_labels, model.batches, n_cells)
    return Prepared(inputs, alignment, ids, frozenset({contract.COUNTS}) if log1p else frozenset())

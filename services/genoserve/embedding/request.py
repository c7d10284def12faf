"""From a count matrix with gene names to the model's inputs: validate, align, one-hot batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.core.errors import InvalidArgument
from genoserve.embedding import batches, contract
from genoserve.embedding.contract import EmbeddingContract
from genoserve.embedding.counts import Counts, CsrCounts, aligned_dense, check
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
) -> Prepared:
    """Every request rule, in order: genes (names, overlap), matrix (structure, values), cell ids,
    batch labels. ``min_overlap`` 0 means the default (0.8). ``first_cell`` numbers default ids
    (``cell<first_cell + i>``); pass a previous ``alignment`` to reuse it for the same genes.
    ``log1p_inputs``: the model's (``LoadedModel.log1p_inputs``); when it holds ``counts``, they
    are laid out as log1p(counts)."""
    field = "counts.csr" if isinstance(counts, CsrCounts) else "counts.dense"
    if isinstance(counts, CsrCounts) and counts.n_genes != len(gene_names):
        raise InvalidArgument.field(field, "gene count mismatch")  # cannot happen through the codec
    if alignment is None:
        alignment = align(gene_names, model.genes, min_overlap or DEFAULT_MIN_OVERLAP)
    n_cells = check(counts, len(gene_names), not_raw_counts, first_cell=first_cell)
    if cell_ids and len(cell_ids) != n_cells:
        raise InvalidArgument.field(
            "counts.cell_ids", f"has {len(cell_ids)} ids for {n_cells} cells; give one per cell or none"
        )
    ids = list(cell_ids) if cell_ids else [f"cell{first_cell + i}" for i in range(n_cells)]
    log1p = contract.COUNTS in log1p_inputs
    inputs = {contract.COUNTS: aligned_dense(counts, alignment, log1p)}
    if model.takes_batch or batch_labels:
        inputs[contract.BATCH] = batches.one_hot(batch_labels, model.batches, n_cells)
    return Prepared(inputs, alignment, ids, frozenset({contract.COUNTS}) if log1p else frozenset())

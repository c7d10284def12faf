"""Gene alignment by name: the request's columns are mapped onto the model's gene list.

scvi-tools checks only the number of genes, so the same genes in another order silently give a
wrong embedding. Here every column is matched by name: reordered, the model's genes missing from
the data are zero-filled, genes the model does not know are dropped, and too small an overlap is
refused.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.core.errors import InvalidArgument, quoted

Array = np.ndarray[Any, Any]

DEFAULT_MIN_OVERLAP = 0.8
#: Missing gene names listed in a response or error (the rest are counted).
SHOWN_MISSING = 20


@dataclass(frozen=True)
class GeneAlignment:
    """How data columns map onto the model's genes.

    ``source``: int64 [matched], data column of each matched gene; ``target``: int64 [matched],
    its model column. ``column_map``: int64 [n_data_genes], the model column of each data column,
    -1 where the model does not know the gene (dropped).
    """

    n_model_genes: int
    n_data_genes: int
    source: Array
    target: Array
    column_map: Array
    missing: tuple[str, ...]

    @property
    def matched(self) -> int:
        return int(self.source.size)

    @property
    def extra(self) -> int:
        """Data genes the model does not know (dropped)."""
        return self.n_data_genes - self.matched

    @property
    def overlap(self) -> float:
        """Fraction of the model's genes present in the data."""
        return self.matched / self.n_model_genes if self.n_model_genes else 0.0

    @functools.cached_property
    def column_map32(self) -> Array:
        """``column_map`` as int32 (gathers over millions of CSR entries write half the bytes)."""
        out: Array = self.column_map.astype(np.int32)
        return out

    @property
    def identity(self) -> bool:
        """The data columns are exactly the model's genes in the model's order."""
        return self.n_data_genes == self.n_model_genes == self.matched and bool(
            np.array_equal(self.source, self.target)
        )


def check_unique(names: Sequence[str], field: str) -> None:
    """InvalidArgument naming the first repeated name (names must identify columns)."""
    distinct = set(names)
    if len(distinct) == len(names) and "" not in distinct:
        return
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise InvalidArgument.field(
                field, f"gene names must be unique; {quoted(name)} appears at columns {seen[name]} and {i}"
            )
        if not name:
            raise InvalidArgument.field(field, f"gene name at column {i} is empty")
        seen[name] = i


def align(
    data_genes: Sequence[str],
    model_genes: Sequence[str],
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    field: str = "counts.gene_names",
) -> GeneAlignment:
    """Match ``data_genes`` to ``model_genes`` by exact name.

    Raises InvalidArgument (naming ``field``) on duplicate or empty names, and when the fraction
    of model genes found is below ``min_overlap`` (the message states the overlap).
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise InvalidArgument.field("min_gene_overlap", f"must be within [0, 1], got {min_overlap}")
    if not data_genes:
        raise InvalidArgument.field(field, "at least one gene name is required")
    check_unique(data_genes, field)
    position = {name: j for j, name in enumerate(model_genes)}
    column_map = np.fromiter(map(position.get, data_genes, itertools.repeat(-1)), dtype=np.int64, count=len(data_genes))
    source = np.flatnonzero(column_map >= 0)
    target = column_map[source]
    present = np.zeros(len(model_genes), dtype=bool)
    present[target] = True
    missing = tuple(model_genes[int(i)] for i in np.flatnonzero(~present))
    alignment = GeneAlignment(len(model_genes), len(data_genes), source, target, column_map, missing)
    if alignment.overlap < min_overlap:
        shown = ", ".join(missing[:SHOWN_MISSING]) + (", ..." if len(missing) > SHOWN_MISSING else "")
        raise InvalidArgument.field(
            field,
            f"gene overlap {alignment.overlap:.3f} ({alignment.matched} of the model's {len(model_genes)} genes "
            f"found) is below min_gene_overlap {min_overlap:g}; missing: {shown}",
        )
    return alignment

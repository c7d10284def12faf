"""Batch covariate: labels -> one-hot in the model's category order (scVI's ``batch_key``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genoserve.core.errors import InvalidArgument, quoted

Array = np.ndarray[Any, Any]


def one_hot(labels: Sequence[str], categories: Sequence[str], n_cells: int, field: str = "batch_labels") -> Array:
    """float32 [n_cells, n_categories]. ``labels``: one per cell, or a single label for every cell.

    An unknown label is an InvalidArgument listing the known ones.
    """
    if not categories:
        raise InvalidArgument.field(field, "this model takes no batch covariate; leave batch labels empty")
    if not labels:
        raise InvalidArgument.field(
            field, f"this model needs a batch label per cell (or one for all); known batches: {list(categories)}"
        )
    if len(labels) not in (1, n_cells):
        raise InvalidArgument.field(field, f"has {len(labels)} labels for {n_cells} cells; give one per cell or one")
    position = {c: i for i, c in enumerate(categories)}
    distinct = sorted(set(labels))
    unknown = [x for x in distinct if x not in position]
    if unknown:
        raise InvalidArgument.field(
            field, f"unknown batch label {quoted(unknown[0])}; known batches: {list(categories)}"
        )
    if len(labels) == 1:
        codes = np.full(n_cells, position[labels[0]], dtype=np.int64)
    else:
        codes = np.fromiter(map(position.__getitem__, labels), dtype=np.int64, count=n_cells)
    out = np.zeros((n_cells, len(categories)), dtype=np.float32)
    out[np.arange(n_cells), codes] = 1.0
    return out

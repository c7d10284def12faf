"""Embedding quality: kNN cell-type accuracy, scaled silhouette on labels, batch mixing.

Definitions (facts from the literature, implemented here in numpy):
- kNN accuracy: each query cell takes the majority label of its k nearest reference cells
  (Euclidean); the fraction of query cells labelled correctly (label transfer, as in scArches).
- Scaled silhouette (ASW): mean silhouette width s (Rousseeuw 1987) over cells, rescaled to
  (s + 1) / 2 in [0, 1] (as scib's ``silhouette``).
- Batch mixing: per cell, the entropy of the batch labels among its k nearest neighbours
  divided by log(n_batches), averaged over cells (entropy of batch mixing, Haghverdi et al.
  2018, normalised): 1 = neighbourhoods as mixed as possible, 0 = every neighbourhood one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
#: One label per cell (strings or integers).
Labels = Sequence[Any] | Array


def _sq_distances(a: Array, b: Array) -> Array:
    """Squared Euclidean distances, float64 [len(a), len(b)]."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    d = (a64**2).sum(1)[:, None] + (b64**2).sum(1)[None, :] - 2.0 * a64 @ b64.T
    out: Array = np.maximum(d, 0.0)
    return out


def _codes(labels: Labels) -> tuple[Array, int]:
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if len(codes) else 0


def neighbours(query: Array, reference: Array, k: int, exclude_self: bool = False, block: int = 2048) -> Array:
    """Indices int64 [len(query), k] of the k nearest reference rows (self excluded on request)."""
    out = np.empty((query.shape[0], k), dtype=np.int64)
    for i in range(0, query.shape[0], block):
        d = _sq_distances(query[i : i + block], reference)
        if exclude_self:
            rows = np.arange(d.shape[0])
            d[rows, rows + i] = np.inf
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[i : i + block] = np.take_along_axis(part, order, 1)
    return out


def knn_accuracy(reference: Array, reference_labels: Labels, query: Array, query_labels: Labels, k: int = 15) -> float:
    """Fraction of ``query`` cells whose k nearest ``reference`` cells' majority label is right."""
    every, codes = np.unique(np.concatenate([np.asarray(reference_labels), np.asarray(query_labels)]),
                             return_inverse=True)  # fmt: skip
    ref_codes, query_codes = codes[: len(reference_labels)], codes[len(reference_labels) :]
    near = ref_codes[neighbours(query, reference, k)]
    votes = np.zeros((near.shape[0], len(every)), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(near.shape[0]), k), near.ravel()), 1)
    return float((votes.argmax(1) == query_codes).mean())


def silhouette(embedding: Array, labels: Labels) -> float:
    """Mean silhouette width over cells, in [-1, 1]; a cell alone in its label counts 0."""
    codes, n_labels = _codes(labels)
    if n_labels < 2:
        raise ValueError("silhouette needs at least two labels")
    distance = np.sqrt(_sq_distances(embedding, embedding))
    sums = np.zeros((embedding.shape[0], n_labels))
    for c in range(n_labels):
        sums[:, c] = distance[:, codes == c].sum(1)
    sizes = np.bincount(codes, minlength=n_labels).astype(np.float64)
    own = codes
    rows = np.arange(len(codes))
    a = sums[rows, own] / np.maximum(sizes[own] - 1, 1)
    mean_other = sums / np.maximum(sizes, 1)
    mean_other[rows, own] = np.inf
    b = mean_other.min(1)
    s = np.where(sizes[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def scaled_silhouette(embedding: Array, labels: Labels) -> float:
    """(silhouette + 1) / 2, in [0, 1]; higher = labels better separated."""
    return (silhouette(embedding, labels) + 1.0) / 2.0


def batch_mixing(embedding: Array, batches: Labels, k: int = 15) -> float:
    """Mean normalised entropy of batch labels among each cell's k nearest neighbours, in [0, 1]."""
    codes, n_batches = _codes(batches)
    if n_batches < 2:
        raise ValueError("batch mixing needs at least two batches")
    near = codes[neighbours(embedding, embedding, k, exclude_self=True)]
    counts = np.zeros((near.shape[0], n_batches))
    np.add.at(counts, (np.repeat(np.arange(near.shape[0]), k), near.ravel()), 1.0)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return float(entropy.mean() / np.log(n_batches))

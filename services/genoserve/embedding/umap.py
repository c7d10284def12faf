"""A compact UMAP in numpy, for the picture of an embedding (not for analysis).

The algorithm of McInnes, Healy & Melville 2018, "UMAP: Uniform Manifold Approximation and
Projection for Dimension Reduction" (arXiv:1802.03426), sections 3-4, with umap-learn's defaults:

1. k nearest neighbours (k = 15, Euclidean, exact; the caller subsamples large inputs).
2. Fuzzy simplicial set: per point, rho = distance to the nearest neighbour and sigma such that
   sum_j exp(-(d_ij - rho) / sigma) = log2(k) (binary search); w_ij = exp(-(d_ij - rho) / sigma);
   symmetrised by the fuzzy union w + w^T - w * w^T.
3. Layout: low-dimensional similarity 1 / (1 + a d^(2b)), a = 1.577, b = 0.895 (umap-learn's fit for
   min_dist = 0.1, spread = 1); SGD on the fuzzy cross-entropy, each edge sampled in proportion
   to its weight, 5 negative samples per positive one, gradients clipped to [-4, 4], learning
   rate decaying linearly from 1 to 0.

Differences from umap-learn, stated: the initial layout is the data's top two principal
components scaled to a range of 20 (umap-learn's ``init="pca"`` option, not its spectral
default), and every epoch's updates are computed from the positions at the start of the epoch
and applied together (as GPU implementations do), so the layout is vectorised numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from genoserve.embedding.metrics import neighbours

Array = np.ndarray[Any, Any]

A, B = 1.5769434603113077, 0.8950608779109733  # umap-learn find_ab_params(spread=1.0, min_dist=0.1)
NEGATIVE_RATE = 5
CLIP = 4.0


def fuzzy_graph(points: Array, k: int = 15) -> sp.coo_matrix:
    """The symmetric fuzzy simplicial set of ``points`` float [n, d]: a sparse [n, n] graph."""
    n = points.shape[0]
    k = min(k, n - 1)
    near = neighbours(points, points, k, exclude_self=True)
    diff = points[near] - points[:, None, :]
    dist = np.sqrt((diff.astype(np.float64) ** 2).sum(-1))  # [n, k], ascending
    rho = dist[:, 0]
    shifted = np.maximum(dist - rho[:, None], 0.0)
    target = np.log2(k + 1)  # umap-learn counts the point itself among its n_neighbors
    lo, hi = np.zeros(n), np.full(n, np.inf)
    sigma = np.ones(n)
    for _ in range(64):
        total = np.exp(-shifted / sigma[:, None]).sum(1)
        too_big = total > target
        hi = np.where(too_big, sigma, hi)
        lo = np.where(too_big, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, (lo + hi) / 2.0)
    sigma = np.maximum(sigma, 1e-3 * max(float(dist.mean()), 1e-12))
    weights = np.exp(-shifted / sigma[:, None])
    graph = sp.csr_matrix((weights.ravel(), (np.repeat(np.arange(n), k), near.ravel())), shape=(n, n))
    product = graph.multiply(graph.T)
    union: sp.coo_matrix = (graph + graph.T - product).tocoo()
    union.eliminate_zeros()
    return union


def _initial(points: Array) -> Array:
    centred = points.astype(np.float64) - points.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    start = centred @ vt[:2].T
    scale = np.abs(start).max()
    out: Array = (start * (10.0 / scale) if scale > 0 else start).astype(np.float32)
    return out


def _clip(values: Array) -> Array:
    out: Array = np.clip(values, -CLIP, CLIP)
    return out


def umap(points: Array, k: int = 15, n_epochs: int | None = None, seed: int = 0) -> Array:
    """2-d layout float32 [n, 2] of ``points`` float [n, d] (n >= 3)."""
    n = points.shape[0]
    if n < 3:
        raise ValueError("umap needs at least 3 points")
    epochs = n_epochs if n_epochs is not None else 200  # umap-learn's default for large data (500 below 10k)
    graph = fuzzy_graph(points, k)
    keep = graph.data >= graph.data.max() / epochs  # umap-learn drops edges sampled less than once
    head, tail, weight = graph.row[keep], graph.col[keep], graph.data[keep]
    per_sample = weight.max() / weight  # epochs between two samples of an edge
    next_sample = per_sample.copy()
    rng = np.random.default_rng(seed)
    start = _initial(points)
    x, y = start[:, 0].copy(), start[:, 1].copy()  # coordinates as 1-d arrays: faster elementwise work
    a, b, alpha_f = np.float32(A), np.float32(B), np.float32(1.0)
    for epoch in range(epochs):
        alpha_f = np.float32(1.0 - epoch / epochs)
        due = np.flatnonzero(next_sample <= epoch + 1)
        if len(due) == 0:
            continue
        next_sample[due] += per_sample[due]
        i, j = head[due], tail[due]
        xi, yi = x[i], y[i]
        dx, dy = xi - x[j], yi - y[j]
        d2 = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
        power = d2 ** (b - 1)  # d^(2(b-1)); d^(2b) = power * d2
        attract = np.float32(-2.0 * A * B) * power / (1 + a * power * d2)
        gx, gy = _clip(attract * dx) * alpha_f, _clip(attract * dy) * alpha_f
        # NEGATIVE_RATE random points pushed away from each head, summed per edge before scattering.
        others = rng.integers(0, n, size=(len(due), NEGATIVE_RATE))
        nx, ny = xi[:, None] - x[others], yi[:, None] - y[others]
        nd2 = nx * nx + ny * ny
        repel = np.float32(2.0 * B) / ((np.float32(0.001) + nd2) * (1 + a * nd2**b))
        repel[others == i[:, None]] = 0.0
        hx = gx + _clip(repel * nx).sum(1) * alpha_f
        hy = gy + _clip(repel * ny).sum(1) * alpha_f
        x += (np.bincount(i, hx, n) - np.bincount(j, gx, n)).astype(np.float32)
        y += (np.bincount(i, hy, n) - np.bincount(j, gy, n)).astype(np.float32)
    out: Array = np.stack([x, y], axis=1).astype(np.float32)
    return out

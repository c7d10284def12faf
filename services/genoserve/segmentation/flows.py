"""Training targets as in Cellpose: flows from instance masks by heat diffusion from each centre.

For every cell, heat is injected at the cell's centre pixel (the mask pixel nearest the median of
its coordinates) and diffused within the mask (3x3 mean restricted to pixels of the same cell);
the flow is the normalised spatial gradient of the resulting field (Stringer et al. 2021, Cellpose,
"masks_to_flows"). All cells diffuse at once on the whole image, so the cost is
O(iterations x H x W) with numpy array operations, not a Python loop per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def centers(masks: Array) -> tuple[Array, Array, Array]:
    """Per label (1..max, present ones only): (labels, centre y, centre x) as int64 arrays.

    The centre is the mask pixel nearest the per-cell median of the coordinates (as Cellpose).
    """
    ys, xs = np.nonzero(masks)
    lab = masks[ys, xs].astype(np.int64)
    order = np.argsort(lab, kind="stable")
    ys, xs, lab = ys[order], xs[order], lab[order]
    labels, starts, counts = np.unique(lab, return_index=True, return_counts=True)
    if labels.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    # Per-cell medians: sort coordinates within each cell (cell id as the major key).
    mid = starts + (counts - 1) // 2
    mid_hi = starts + counts // 2
    ys_sorted = ys[np.lexsort((ys, lab))]
    xs_sorted = xs[np.lexsort((xs, lab))]
    ymed = 0.5 * (ys_sorted[mid] + ys_sorted[mid_hi])
    xmed = 0.5 * (xs_sorted[mid] + xs_sorted[mid_hi])
    cell = np.repeat(np.arange(labels.size), counts)
    d2 = (ys - ymed[cell]) ** 2 + (xs - xmed[cell]) ** 2
    # argmin per cell: sort by (cell, d2) and take each cell's first entry.
    best = np.lexsort((d2, cell))[starts]
    return labels, ys[best].astype(np.int64), xs[best].astype(np.int64)


def _extents(masks: Array, ys: Array, xs: Array) -> Array:
    """Per label 0..max: bounding-box height + width (0 for absent labels)."""
    lab = masks[ys, xs]
    size = int(lab.max()) + 1
    ymin = np.full(size, masks.shape[0])
    ymax = np.full(size, -1)
    xmin = np.full(size, masks.shape[1])
    xmax = np.full(size, -1)
    np.minimum.at(ymin, lab, ys)
    np.maximum.at(ymax, lab, ys)
    np.minimum.at(xmin, lab, xs)
    np.maximum.at(xmax, lab, xs)
    return np.asarray(np.maximum((ymax - ymin + 1) + (xmax - xmin + 1), 0))


def masks_to_flows(masks: Array, niter: int | None = None) -> Array:
    """Instance masks [H, W] (0 = background, ints) -> unit flows float32 [2, H, W] (dY, dX).

    Background pixels get (0, 0). ``niter`` defaults to twice the largest cell extent (height +
    width), enough for heat to reach every pixel of every cell. Works on the foreground pixels
    only: each keeps the indexes of its 8 neighbours of the same cell, and every iteration is one
    gather and sum over those (float64, so heat far from a centre does not underflow).
    """
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"masks must be [H, W], got shape {masks.shape}")
    h, w = masks.shape
    flows = np.zeros((2, h, w), dtype=np.float32)
    labels, cy, cx = centers(masks)
    if labels.size == 0:
        return flows
    ys, xs = np.nonzero(masks)
    n = ys.size
    index, neighbours = _neighbours(masks, ys, xs, _OFFSETS)
    if niter is None:
        niter = int(2 * _extents(masks, ys, xs)[labels].max())
    heat = np.zeros(n + 1, dtype=np.float64)
    sources = index[cy + 1, cx + 1]
    for _ in range(niter):
        heat[sources] += 1.0
        heat[:n] = heat[neighbours].sum(axis=0) / 9.0
    field = np.log1p(heat)
    this = np.arange(n)
    step = {offset: np.where(neighbours[k] < n, neighbours[k], this) for k, offset in enumerate(_OFFSETS)}
    grad = np.stack([field[step[(1, 0)]] - field[step[(-1, 0)]], field[step[(0, 1)]] - field[step[(0, -1)]]])
    norm = np.maximum(np.sqrt((grad**2).sum(axis=0)), 1e-20)
    flows[:, ys, xs] = (grad / norm).astype(np.float32)
    return flows


def _neighbours(masks: Array, ys: Array, xs: Array, offsets: Sequence[tuple[int, int]]) -> tuple[Array, Array]:
    """For the mask pixels (``ys``, ``xs``), n of them: ``index`` [H + 2, W + 2], each pixel's
    number (n elsewhere, a 1-pixel border included), and ``neighbours`` [len(offsets), n], the
    number of the pixel at each offset if it belongs to the same cell, else n (cold)."""
    h, w = masks.shape
    n = ys.size
    index = np.full((h + 2, w + 2), n, dtype=np.int64)
    index[ys + 1, xs + 1] = np.arange(n)
    padded = np.pad(masks, 1)
    own = masks[ys, xs]
    neighbours = np.empty((len(offsets), n), dtype=np.int64)
    for k, (dy, dx) in enumerate(offsets):
        same = padded[ys + 1 + dy, xs + 1 + dx] == own
        neighbours[k] = np.where(same, index[ys + 1 + dy, xs + 1 + dx], n)
    return index, neighbours


#: Cellpose 3.1's diffusion stencil order (``dynamics._extend_centers``): the pixel, up, down,
#: left, right, then the diagonals; summed in this order so that the heat is cellpose's to the bit.
_STENCIL = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]


def check_flows(masks: Array) -> Array:
    """Instance masks [H, W] -> unit flows float64 [2, H, W] as Cellpose 3.1 recomputes them for
    its flow-error check (``dynamics.masks_to_flows_cpu``, the path of ``CellposeModel.eval`` on
    the CPU), which differs from the training targets of ``masks_to_flows``: the centre is the
    mask pixel nearest the *mean* of its coordinates (first in raster order on ties); heat
    diffuses for 2 * (height + width + 4) iterations per cell (its bounding box plus a 1-pixel
    border), with pixels outside the cell cold; the flow is the raw heat's central difference (no
    log), normalised per pixel. All cells diffuse together; a cell stops when its own iteration
    count is reached (pixels are ordered by that count, so each iteration works on a prefix).
    """
    masks = np.asarray(masks)
    h, w = masks.shape
    flows = np.zeros((2, h, w), dtype=np.float64)
    ys, xs = np.nonzero(masks)
    if ys.size == 0:
        return flows
    lab = masks[ys, xs].astype(np.int64)
    order = np.argsort(lab, kind="stable")  # by cell, raster order within each
    ys, xs, lab = ys[order], xs[order], lab[order]
    _, starts, counts = np.unique(lab, return_index=True, return_counts=True)
    cell = np.repeat(np.arange(counts.size), counts)
    ymin, xmin = np.minimum.reduceat(ys, starts), np.minimum.reduceat(xs, starts)
    ymax, xmax = np.maximum.reduceat(ys, starts), np.maximum.reduceat(xs, starts)
    niter = 2 * ((ymax - ymin + 3) + (xmax - xmin + 3))
    # The centre, in bounding-box coordinates (+1) as cellpose computes it.
    yl = (ys - ymin[cell] + 1).astype(np.int32)
    xl = (xs - xmin[cell] + 1).astype(np.int32)
    ymean = np.bincount(cell, weights=yl) / counts
    xmean = np.bincount(cell, weights=xl) / counts
    d2 = (xl - xmean[cell]) ** 2 + (yl - ymean[cell]) ** 2
    centre = np.lexsort((d2, cell))[starts]
    # Pixels by descending iteration count of their cell (stable: cells stay contiguous).
    by_iter = np.argsort(-niter[cell], kind="stable")
    ys, xs, lab = ys[by_iter], xs[by_iter], lab[by_iter]
    position = np.empty(ys.size, dtype=np.int64)
    position[by_iter] = np.arange(ys.size)
    sources = np.sort(position[centre])
    source_iters = niter[cell[by_iter][sources]]
    active_until = np.sort(niter[cell])[::-1]  # per pixel (in the new order): its cell's count
    n = ys.size
    _, neighbours = _neighbours(masks, ys, xs, _STENCIL)
    heat = np.zeros(n + 1, dtype=np.float64)
    ninth = 1 / 9.0
    for t in range(int(niter.max())):
        active = int(np.searchsorted(-active_until, -t, side="left"))  # pixels of cells with count > t
        heat[sources[source_iters > t]] += 1.0
        near = neighbours[:, :active]
        total = heat[near[0]]
        for k in range(1, len(_STENCIL)):
            total += heat[near[k]]
        heat[:active] = ninth * total
    dy = heat[neighbours[2]] - heat[neighbours[1]]
    dx = heat[neighbours[4]] - heat[neighbours[3]]
    norm = 1e-60 + np.sqrt(dy**2 + dx**2)
    flows[0, ys, xs] = dy / norm
    flows[1, ys, xs] = dx / norm
    return flows

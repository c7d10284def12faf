"""Training targets as in Cellpose: flows from instance masks by heat diffusion from each centre.

For every cell, heat is injected at the cell's centre pixel (the mask pixel nearest the median of
its coordinates) and diffused within the mask (3x3 mean restricted to pixels of the same cell);
the flow is the normalised spatial gradient of the resulting field (Stringer et al. 2021, Cellpose,
"masks_to_flows"). All cells diffuse at once on the whole image, so the cost is
O(iterations x H x W) with numpy array operations, not a Python loop per cell.
"""

from __future__ import annotations

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


def masks_to_flows(masks: Array, niter: int | None = None) -> Array:
    """Instance masks [H, W] (0 = background, ints) -> unit flows float32 [2, H, W] (dY, dX).

    Background pixels get (0, 0). ``niter`` defaults to twice the largest cell extent (height +
    width), enough for heat to reach every pixel of every cell.
    """
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"masks must be [H, W], got shape {masks.shape}")
    h, w = masks.shape
    flows = np.zeros((2, h, w), dtype=np.float32)
    labels, cy, cx = centers(masks)
    if labels.size == 0:
        return flows
    padded = np.pad(masks, 1)
    heat = np.zeros((h + 2, w + 2), dtype=np.float64)
    inside = padded > 0
    same = [(dy, dx, inside & (np.roll(padded, (-dy, -dx), axis=(0, 1)) == padded)) for dy, dx in _OFFSETS]
    if niter is None:
        ys, xs = np.nonzero(masks)
        lab = masks[ys, xs]
        size = int(lab.max()) + 1
        ymin = np.full(size, h)
        ymax = np.full(size, -1)
        xmin = np.full(size, w)
        xmax = np.full(size, -1)
        np.minimum.at(ymin, lab, ys)
        np.maximum.at(ymax, lab, ys)
        np.minimum.at(xmin, lab, xs)
        np.maximum.at(xmax, lab, xs)
        extent = (ymax - ymin + 1) + (xmax - xmin + 1)
        niter = int(2 * extent[labels].max())
    for _ in range(niter):
        heat[cy + 1, cx + 1] += 1.0
        total = np.zeros_like(heat)
        for dy, dx, ok in same:
            total += np.where(ok, np.roll(heat, (-dy, -dx), axis=(0, 1)), 0.0)
        heat = total / 9.0
    field = np.log1p(heat)
    down = np.where(same[7][2], np.roll(field, -1, axis=0), field)
    up = np.where(same[1][2], np.roll(field, 1, axis=0), field)
    right = np.where(same[5][2], np.roll(field, -1, axis=1), field)
    left = np.where(same[3][2], np.roll(field, 1, axis=1), field)
    grad = np.stack([down - up, right - left])[:, 1:-1, 1:-1]
    norm = np.sqrt((grad**2).sum(axis=0))
    fg = masks > 0
    flows[:, fg] = (grad[:, fg] / np.maximum(norm[fg], 1e-20)).astype(np.float32)
    return flows

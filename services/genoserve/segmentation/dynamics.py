"""Flows + cell probability -> instance label masks, vectorised (Cellpose's ``compute_masks``).

Steps, with Cellpose's parameters and defaults:

1. Pixels with ``cellprob > cellprob_threshold`` (logit, default 0) start at their own position
   and follow the flow field by Euler steps of bilinearly interpolated flow for ``niter`` steps
   (default 200); all pixels move together as one array (no per-pixel loop).
2. A histogram of the rounded end points; seeds are its local maxima (5x5) holding more than
   ``SEED_MIN_COUNT`` end points. Seeds grow ``GROW_STEPS`` times into neighbouring histogram
   bins with more than ``GROW_MIN_COUNT`` end points, and every pixel takes the label of the
   grown seed its end point falls into (pixels that end nowhere stay background).
3. Masks larger than ``max_size_fraction`` of the image are dropped (a failed convergence).
4. Flow-error check: flows are recomputed from the masks (``flows.masks_to_flows``); a mask whose
   mean squared difference to the network's flows exceeds ``flow_threshold`` (default 0.4) is
   dropped; ``flow_threshold <= 0`` skips the check.
5. Holes are filled and masks smaller than ``min_size`` pixels (default 15) dropped; labels are
   renumbered 1..n in raster order of their first pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from genoserve.segmentation.flows import masks_to_flows

Array = np.ndarray[Any, Any]

SEED_MIN_COUNT = 10
GROW_MIN_COUNT = 2
GROW_STEPS = 5

#: (gated flows float32 [2, H, W], ys [N], xs [N], niter) -> end points float32 [2, N]
FollowFn = Callable[[Array, Array, Array, int], Array]


@dataclass(frozen=True)
class MaskParams:
    """Cellpose-compatible post-processing parameters (same names and defaults)."""

    niter: int = 200
    cellprob_threshold: float = 0.0
    flow_threshold: float = 0.4
    min_size: int = 15
    max_size_fraction: float = 0.4


def follow_flows(flows: Array, ys: Array, xs: Array, niter: int) -> Array:
    """Euler-integrate points through a flow field with bilinear interpolation.

    flows: float32 [2, H, W] (dY, dX, pixels per step); ys, xs: start coordinates [N].
    Returns float32 [2, N] end coordinates, clipped to the image at every step. All points move
    together: per step, 8 gathers from the flattened flow planes and a few array operations.
    """
    h, w = flows.shape[1:]
    fy = np.ascontiguousarray(flows[0], dtype=np.float32).ravel()
    fx = np.ascontiguousarray(flows[1], dtype=np.float32).ravel()
    py = ys.astype(np.float32)
    px = xs.astype(np.float32)
    ymax, xmax = np.float32(h - 1), np.float32(w - 1)
    down = w if h > 1 else 0  # index step to the next row / column (0 on a 1-pixel axis)
    right = 1 if w > 1 else 0
    y0 = np.empty(py.size, np.int32)
    x0 = np.empty(px.size, np.int32)
    for _ in range(niter):
        np.minimum(py.astype(np.int32), max(h - 2, 0), out=y0)
        np.minimum(px.astype(np.int32), max(w - 2, 0), out=x0)
        ty = py - y0
        tx = px - x0
        i = y0 * w + x0
        j = i + down
        for plane, position, limit in ((fy, py, ymax), (fx, px, xmax)):
            a, b = np.take(plane, i), np.take(plane, i + right)
            c, d = np.take(plane, j), np.take(plane, j + right)
            top = a + (b - a) * tx
            position += top + (c + (d - c) * tx - top) * ty
            np.clip(position, 0, limit, out=position)
    return np.stack([py, px])


def masks_from_endpoints(ends: Array, ys: Array, xs: Array, shape: tuple[int, int]) -> Array:
    """Cluster end points [2, N] of the pixels (ys, xs) into a label image int32 [H, W]."""
    h, w = shape
    masks = np.zeros(shape, dtype=np.int32)
    if ys.size == 0:
        return masks
    ey = np.rint(ends[0]).astype(np.int64)
    ex = np.rint(ends[1]).astype(np.int64)
    hist = np.bincount(ey * w + ex, minlength=h * w).reshape(h, w)
    peaks = (hist == ndimage.maximum_filter(hist, size=5, mode="constant")) & (hist > SEED_MIN_COUNT)
    seeds, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    grow_ok = hist > GROW_MIN_COUNT
    for _ in range(GROW_STEPS):
        grown = ndimage.maximum_filter(seeds, size=3, mode="constant")
        seeds = np.where((seeds == 0) & grow_ok, grown, seeds)
    masks[ys, xs] = seeds[ey, ex]
    return masks


def remove_large(masks: Array, max_fraction: float) -> Array:
    """Drop masks covering more than ``max_fraction`` of the image."""
    if max_fraction <= 0 or max_fraction >= 1 or masks.max() == 0:
        return masks
    counts = np.bincount(masks.ravel())
    big = np.nonzero(counts > max_fraction * masks.size)[0]
    big = big[big > 0]
    return np.where(np.isin(masks, big), 0, masks) if big.size else masks


def flow_errors(masks: Array, flows: Array) -> Array:
    """Per label 0..max: mean over the mask of sum_c (flows_from_masks - flows)^2; [max + 1] float64."""
    recomputed = masks_to_flows(masks)
    sq = ((recomputed - flows) ** 2).sum(axis=0)
    n = int(masks.max()) + 1
    counts = np.bincount(masks.ravel(), minlength=n)
    sums = np.bincount(masks.ravel(), weights=sq.ravel(), minlength=n)
    return np.asarray(sums / np.maximum(counts, 1), dtype=np.float64)


def remove_bad_flows(masks: Array, flows: Array, threshold: float) -> Array:
    """Drop masks whose flow error exceeds ``threshold`` (Cellpose's flow-error check)."""
    if threshold <= 0 or masks.max() == 0:
        return masks
    errors = flow_errors(masks, flows)
    bad = np.nonzero(errors > threshold)[0]
    bad = bad[bad > 0]
    return np.where(np.isin(masks, bad), 0, masks) if bad.size else masks


def fill_holes(masks: Array) -> Array:
    """Fill background regions enclosed by exactly one mask (4-connected holes)."""
    background, n = ndimage.label(masks == 0)
    if n == 0:
        return masks
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    is_hole = np.ones(n + 1, dtype=bool)
    is_hole[border] = False
    is_hole[0] = False
    if not is_hole.any():
        return masks
    holes = np.where(is_hole[background], background, 0)
    # Mask pixels touching each hole: the hole's id spread by one pixel onto the masks around it.
    ring = np.where(masks > 0, ndimage.maximum_filter(holes, size=3, mode="constant"), 0)
    ids = np.arange(n + 1)
    lo = np.asarray(ndimage.minimum(masks, labels=ring, index=ids))
    hi = np.asarray(ndimage.maximum(masks, labels=ring, index=ids))
    fill = np.where(is_hole & (lo == hi) & (lo > 0), lo, 0).astype(masks.dtype)
    return np.where(holes > 0, fill[holes], masks)


def renumber(masks: Array, min_size: int = 0) -> Array:
    """Drop masks under ``min_size`` pixels; labels become 1..n in raster order; int32."""
    flat = masks.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    counts = np.bincount(flat, minlength=n)
    keep = counts >= max(min_size, 1)
    keep[0] = False
    first = np.full(n, flat.size, dtype=np.int64)
    np.minimum.at(first, flat, np.arange(flat.size))
    kept = np.nonzero(keep)[0]
    kept = kept[np.argsort(first[kept], kind="stable")]
    table = np.zeros(n, dtype=np.int32)
    table[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    return table[masks]


def compute_masks(
    flows: Array, cellprob: Array, params: MaskParams | None = None, follow: FollowFn | None = None
) -> Array:
    """Flows float32 [2, H, W] and cell-probability logits float32 [H, W] -> labels int32 [H, W].

    ``follow`` replaces ``follow_flows`` (e.g. the ONNX graph on a GPU); same contract.
    """
    params = params or MaskParams()
    shape = (int(cellprob.shape[0]), int(cellprob.shape[1]))
    fg = cellprob > params.cellprob_threshold
    ys, xs = np.nonzero(fg)
    if ys.size == 0:
        return np.zeros(shape, dtype=np.int32)
    gated = (flows * fg).astype(np.float32)
    ends = (follow or follow_flows)(gated, ys, xs, params.niter)
    masks = masks_from_endpoints(ends, ys, xs, shape)
    masks = remove_large(masks, params.max_size_fraction)
    masks = remove_bad_flows(masks, flows.astype(np.float32), params.flow_threshold)
    masks = fill_holes(masks)
    return renumber(masks, params.min_size)

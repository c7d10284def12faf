"""Flows + cell probability -> instance label masks, vectorised (Cellpose's ``compute_masks``).

Steps, with Cellpose's parameters and defaults:

1. Pixels with ``cellprob > cellprob_threshold`` (logit, default 0) start at their own position
   and follow the flow field by Euler steps of bilinearly interpolated flow for ``niter`` steps
   (default 200); all pixels move together as one array (no per-pixel loop).
2. A histogram of the end points, truncated to whole pixels (as Cellpose's ``get_masks_torch``
   takes them: ``p_final.int()``); seeds are its local maxima (5x5) holding more than
   ``SEED_MIN_COUNT`` end points. Seeds grow ``GROW_STEPS`` times into neighbouring histogram
   bins with more than ``GROW_MIN_COUNT`` end points, and every pixel takes the label of the
   grown seed its end point falls into (pixels that end nowhere stay background).
3. Masks larger than ``max_size_fraction`` of the image are dropped (a failed convergence).
4. Flow-error check: flows are recomputed from the masks as Cellpose 3.1 recomputes them for it
   (``flows.check_flows``, not the training targets of ``flows.masks_to_flows``); a mask whose
   mean squared difference to the network's flows exceeds ``flow_threshold`` (default 0.4) is
   dropped; ``flow_threshold <= 0`` skips the check.
5. Holes are filled and masks smaller than ``min_size`` pixels (default 15) dropped; labels are
   renumbered 1..n in raster order of their first pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from genoserve.segmentation.flows import check_flows

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


#: Points per thread below which flow following stays on one thread.
CHUNK = 65536


def follow_flows(flows: Array, ys: Array, xs: Array, niter: int, threads: int | None = None) -> Array:
    """Euler-integrate points through a flow field with bilinear interpolation.

    flows: float32 [2, H, W] (dY, dX, pixels per step); ys, xs: start coordinates [N].
    Returns float32 [2, N] end coordinates, clipped to the image at every step. All points move
    together: per step, 8 gathers from the flattened flow planes and a few array operations.
    Points are independent, so large sets are split over ``threads`` threads (default: up to
    the CPU count, at least ``CHUNK`` points each); numpy releases the GIL in these loops.
    """
    h, w = flows.shape[1:]
    fy = np.ascontiguousarray(flows[0], dtype=np.float32).ravel()
    fx = np.ascontiguousarray(flows[1], dtype=np.float32).ravel()
    workers = max(1, min(threads or os.cpu_count() or 1, ys.size // CHUNK))
    if workers == 1:
        return _follow(fy, fx, h, w, ys, xs, niter)
    parts = np.array_split(np.arange(ys.size), workers)
    with ThreadPoolExecutor(workers) as pool:
        ends = list(pool.map(lambda idx: _follow(fy, fx, h, w, ys[idx], xs[idx], niter), parts))
    return np.concatenate(ends, axis=1)


def _follow(fy: Array, fx: Array, h: int, w: int, ys: Array, xs: Array, niter: int) -> Array:
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


_NEIGHBOURS_3 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_WINDOW_5 = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]


def _neighbour_index(flat: Array, shape: tuple[int, int], offsets: list[tuple[int, int]]) -> Array:
    """For sorted flat pixel indexes [K]: the flat index of each offset neighbour, -1 outside the
    image; int64 [len(offsets), K]."""
    h, w = shape
    y, x = np.divmod(flat, w)
    out = np.empty((len(offsets), flat.size), dtype=np.int64)
    for k, (dy, dx) in enumerate(offsets):
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        out[k] = np.where(inside, yy * w + xx, -1)
    return out


def _lookup(sorted_keys: Array, queries: Array) -> Array:
    """Position of each query in ``sorted_keys``, -1 where absent."""
    pos = np.searchsorted(sorted_keys, queries)
    pos = np.minimum(pos, max(sorted_keys.size - 1, 0))
    found = (queries >= 0) & (sorted_keys.size > 0) & (sorted_keys[pos] == queries)
    return np.where(found, pos, -1)


def masks_from_endpoints(ends: Array, ys: Array, xs: Array, shape: tuple[int, int]) -> Array:
    """Cluster end points [2, N] of the pixels (ys, xs) into a label image int32 [H, W].

    Works on the occupied histogram bins only (a few per cell), never on the whole image: seeds
    are bins holding more than SEED_MIN_COUNT end points and the most of their 5x5 window;
    8-connected seed bins form one seed (labelled in raster order); each seed grows GROW_STEPS
    times into neighbouring bins holding more than GROW_MIN_COUNT end points (a bin reached by
    two seeds at once takes the larger label).
    """
    w = shape[1]
    masks = np.zeros(shape, dtype=np.int32)
    if ys.size == 0:
        return masks
    ey = ends[0].astype(np.int64)  # truncated (end points are clipped to >= 0: floored)
    ex = ends[1].astype(np.int64)
    bins, bin_of_pixel, counts = np.unique(ey * w + ex, return_inverse=True, return_counts=True)
    # Seeds: local maxima of the histogram over 5x5 (outside the image counts as 0).
    candidates = np.nonzero(counts > SEED_MIN_COUNT)[0]
    window = _neighbour_index(bins[candidates], shape, _WINDOW_5)
    found = _lookup(bins, window)
    window_max = np.where(found >= 0, counts[np.maximum(found, 0)], 0).max(axis=0)
    peaks = candidates[counts[candidates] >= window_max]
    # Only bins above GROW_MIN_COUNT take part from here on (peaks are among them).
    grow = np.nonzero(counts > GROW_MIN_COUNT)[0]
    keys = bins[grow]
    near = _lookup(keys, _neighbour_index(keys, shape, _NEIGHBOURS_3))  # [8, G], -1: not a grow bin
    label = np.zeros(grow.size + 1, dtype=np.int64)  # slot G: "no neighbour", always 0
    near = np.where(near >= 0, near, grow.size)
    peak_pos = np.searchsorted(grow, peaks)
    if peaks.size:
        # 8-connected peak bins are one seed: union over peak-to-peak neighbour links.
        is_peak = np.zeros(grow.size + 1, dtype=bool)
        is_peak[peak_pos] = True
        rows = np.repeat(peak_pos[None, :], 8, axis=0)
        link = is_peak[near[:, peak_pos]]
        graph = sparse.coo_matrix(
            (np.ones(int(link.sum())), (rows[link], near[:, peak_pos][link])), shape=(grow.size, grow.size)
        )
        _, component = csgraph.connected_components(graph, directed=False)
        seed_components = component[peak_pos]
        # Number seeds in raster order of their first bin (as ndimage.label would).
        _, first = np.unique(seed_components, return_index=True)
        order = np.argsort(first)
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(1, order.size + 1)
        label[peak_pos] = rank[np.searchsorted(np.unique(seed_components), seed_components)]
    for _ in range(GROW_STEPS):
        grown = label[near].max(axis=0)
        label[:-1] = np.where(label[:-1] == 0, grown, label[:-1])
    bin_label = np.zeros(bins.size, dtype=np.int64)
    bin_label[grow] = label[:-1]
    masks[ys, xs] = bin_label[bin_of_pixel]
    return masks


def remove_large(masks: Array, max_fraction: float, image_pixels: int | None = None) -> Array:
    """Drop masks covering more than ``max_fraction`` of the image (of ``image_pixels``, default
    the size of ``masks``; a block of a larger image passes the whole image's size)."""
    if max_fraction <= 0 or max_fraction >= 1 or masks.max() == 0:
        return masks
    counts = np.bincount(masks.ravel())
    big = np.nonzero(counts > max_fraction * (image_pixels or masks.size))[0]
    big = big[big > 0]
    return np.where(np.isin(masks, big), 0, masks) if big.size else masks


def flow_errors(masks: Array, flows: Array) -> Array:
    """Per label 0..max: mean over the mask of sum_c (flows_from_masks - flows)^2; [max + 1] float64."""
    recomputed = check_flows(masks)
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
    """Fill background regions (4-connected, not touching the image border) that touch exactly
    one mask (8-neighbourhood). Only the hole pixels are visited after labelling the background."""
    background, n = ndimage.label(masks == 0)
    if n == 0:
        return masks
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    is_hole = np.ones(n + 1, dtype=bool)
    is_hole[border] = False
    is_hole[0] = False
    if not is_hole.any():
        return masks
    flat_bg = background.ravel()
    hole_pixels = np.nonzero(is_hole[flat_bg])[0]
    hole_id = flat_bg[hole_pixels]
    around = _neighbour_index(hole_pixels, masks.shape, _NEIGHBOURS_3)
    labels = np.where(around >= 0, masks.ravel()[np.maximum(around, 0)], 0)  # [8, P]
    big = np.iinfo(np.int64).max
    lo = np.full(n + 1, big, dtype=np.int64)
    hi = np.zeros(n + 1, dtype=np.int64)
    ids = np.broadcast_to(hole_id, labels.shape)
    touching = labels > 0
    np.minimum.at(lo, ids[touching], labels[touching])
    np.maximum.at(hi, ids[touching], labels[touching])
    fill = np.where(is_hole & (lo == hi), hi, 0)
    out = masks.copy()
    out.ravel()[hole_pixels] = fill[hole_id].astype(masks.dtype)
    return out


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
    flows: Array,
    cellprob: Array,
    params: MaskParams | None = None,
    follow: FollowFn | None = None,
    image_pixels: int | None = None,
) -> Array:
    """Flows float32 [2, H, W] and cell-probability logits float32 [H, W] -> labels int32 [H, W].

    ``follow`` replaces ``follow_flows`` (e.g. the ONNX graph on a GPU); same contract.
    ``image_pixels``: the size ``max_size_fraction`` refers to when this is a block of a larger
    image (``blocks.compute_masks_blocked``); default H x W.
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
    masks = remove_large(masks, params.max_size_fraction, image_pixels)
    masks = remove_bad_flows(masks, flows.astype(np.float32), params.flow_threshold)
    masks = fill_holes(masks)
    return renumber(masks, params.min_size)

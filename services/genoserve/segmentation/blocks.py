"""Mask reconstruction block by block, so that its memory is bounded by the block, not the image.

``dynamics.compute_masks`` on a whole 10k x 10k flow field holds several arrays per foreground
pixel (end points, histogram bins, the flows recomputed for the flow-error check), gigabytes
beyond the image itself. Here the image is cut into ``block x block`` cores; each core is
reconstructed together with a ``halo`` of context on every side (clipped at the image border),
and a mask found there is kept by the one block whose core holds its anchor (its pixel nearest the
mean of its coordinates; a mask's anchor lies in exactly one core). Every cell smaller than the
halo is therefore reconstructed entirely inside one block's window, with the same flows, seeds
and checks as on the whole image: labels run across block seams, and the masks equal the
whole-image ones (they differ only where a cell is larger than the halo). Pixels claimed by two
blocks' masks (possible only for cells larger than the halo) keep the first. Labels are numbered
1..n in raster order of each mask's first pixel, as ``dynamics.renumber`` does.

Working memory: one window's arrays (O((block + 2 halo)^2)) plus the output labels [H, W].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genoserve.segmentation.dynamics import FollowFn, MaskParams, compute_masks

Array = np.ndarray[Any, Any]

#: Default core size of a block (pixels per side).
BLOCK = 2048


def halo_for(diameter: float) -> int:
    """Context around each block for cells of about ``diameter`` pixels: room for a cell twice
    that size on either side of a seam (at least 32 pixels)."""
    return max(32, int(np.ceil(2.0 * diameter)))


def _starts(length: int, block: int) -> list[int]:
    return list(range(0, length, block))


def _anchors(masks: Array) -> tuple[Array, Array, Array, Array]:
    """Per label 1..n present in ``masks`` (labels [K]): anchor y, anchor x (the mask pixel nearest
    the mean of its coordinates) and first flat index in ``masks``; all int64 [K]."""
    ys, xs = np.nonzero(masks)
    lab = masks[ys, xs].astype(np.int64)
    n = int(lab.max()) + 1 if lab.size else 1
    count = np.bincount(lab, minlength=n)
    present = np.nonzero(count)[0]
    present = present[present > 0]
    safe = np.maximum(count, 1)
    my = np.bincount(lab, weights=ys, minlength=n) / safe
    mx = np.bincount(lab, weights=xs, minlength=n) / safe
    d2 = (ys - my[lab]) ** 2 + (xs - mx[lab]) ** 2
    order = np.lexsort((d2, lab))  # by label, then distance: each label's first is its anchor
    first_of_label = np.searchsorted(lab[order], present)
    best = order[first_of_label]
    return present, ys[best].astype(np.int64), xs[best].astype(np.int64), np.asarray(best, dtype=np.int64)


def compute_masks_blocked(
    flows: Array,
    cellprob: Array,
    params: MaskParams | None = None,
    follow: FollowFn | None = None,
    block: int = BLOCK,
    halo: int = 32,
) -> Array:
    """Like ``dynamics.compute_masks`` (flows float32 [2, H, W], cellprob logits float32 [H, W] ->
    labels int32 [H, W]), one block at a time; an image no larger than one block runs whole."""
    params = params or MaskParams()
    h, w = (int(cellprob.shape[0]), int(cellprob.shape[1]))
    if block < 1 or halo < 0:
        raise ValueError(f"need block >= 1 and halo >= 0, got {block}, {halo}")
    if h <= block and w <= block:
        return compute_masks(flows, cellprob, params, follow)
    out = np.zeros((h, w), dtype=np.int32)
    firsts: list[Array] = []  # per kept mask, in output-label order: first flat index in the image
    next_label = 1
    for y0 in _starts(h, block):
        for x0 in _starts(w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            wy0, wx0 = max(y0 - halo, 0), max(x0 - halo, 0)
            wy1, wx1 = min(y1 + halo, h), min(x1 + halo, w)
            window = (slice(wy0, wy1), slice(wx0, wx1))
            masks = compute_masks(flows[:, window[0], window[1]], cellprob[window], params, follow, h * w)
            labels, ay, ax, _ = _anchors(masks)
            ay, ax = ay + wy0, ax + wx0
            mine = labels[(ay >= y0) & (ay < y1) & (ax >= x0) & (ax < x1)]
            if mine.size == 0:
                continue
            table = np.zeros(int(masks.max()) + 1, dtype=np.int32)
            table[mine] = np.arange(next_label, next_label + mine.size, dtype=np.int32)
            new = table[masks]
            region = out[window]
            take = (new > 0) & (region == 0)
            region[take] = new[take]
            # First pixel of each kept mask in raster order of the whole image.
            ys, xs = np.nonzero(take)
            flat = (ys + wy0).astype(np.int64) * w + (xs + wx0)
            first = np.full(mine.size, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(first, new[ys, xs] - next_label, flat)
            firsts.append(first)
            next_label += mine.size
    if not firsts:
        return out
    first = np.concatenate(firsts)
    kept = np.nonzero(first < np.iinfo(np.int64).max)[0]  # masks that kept at least one pixel
    order = kept[np.argsort(first[kept], kind="stable")]
    table = np.zeros(first.size + 1, dtype=np.int32)
    table[order + 1] = np.arange(1, order.size + 1, dtype=np.int32)
    for y0 in _starts(h, block):  # relabel in bands (no second full-size temporary)
        out[y0 : y0 + block] = table[out[y0 : y0 + block]]
    return out

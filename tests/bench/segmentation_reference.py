"""A simple per-pixel reference of mask reconstruction, for the benchmark only.

The same algorithm and parameters as ``genoserve.segmentation.dynamics.compute_masks``, written the
straightforward way: each pixel follows the flows on its own in a Python loop (bilinear
interpolation by hand), seeds are found by scanning the histogram pixel by pixel, each seed grows
on its own, and the flow-error check recomputes each cell's flows by diffusion inside the cell's
bounding box, one cell at a time (as Cellpose's CPU code does, but without a JIT compiler).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from genoserve.segmentation.dynamics import GROW_MIN_COUNT, GROW_STEPS, SEED_MIN_COUNT, MaskParams

Array = np.ndarray[Any, Any]


def _follow_one(fy: list[list[float]], fx: list[list[float]], y: float, x: float, niter: int, h: int, w: int
                ) -> tuple[float, float]:  # fmt: skip
    for _ in range(niter):
        y0 = min(int(y), h - 2)
        x0 = min(int(x), w - 2)
        ty, tx = y - y0, x - x0
        a, b, c, d = (1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx
        dy = fy[y0][x0] * a + fy[y0][x0 + 1] * b + fy[y0 + 1][x0] * c + fy[y0 + 1][x0 + 1] * d
        dx = fx[y0][x0] * a + fx[y0][x0 + 1] * b + fx[y0 + 1][x0] * c + fx[y0 + 1][x0 + 1] * d
        y = min(max(y + dy, 0.0), h - 1.0)
        x = min(max(x + dx, 0.0), w - 1.0)
    return y, x


def _cell_flows(mask: Array) -> Array:
    """Diffusion flows of one cell's bool mask (its bounding box), pixel loop per iteration."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    ym, xm = np.median(ys), np.median(xs)
    k = int(np.argmin((ys - ym) ** 2 + (xs - xm) ** 2))
    cy, cx = int(ys[k]), int(xs[k])
    heat = np.zeros((h, w))
    for _ in range(2 * (h + w)):
        heat[cy, cx] += 1.0
        new = np.zeros((h, w))
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
            total = 0.0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx]:
                        total += heat[yy, xx]
            new[y, x] = total / 9.0
        heat = new
    field = np.log1p(heat)
    flows = np.zeros((2, h, w))
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
        down = field[y + 1, x] if y + 1 < h and mask[y + 1, x] else field[y, x]
        up = field[y - 1, x] if y >= 1 and mask[y - 1, x] else field[y, x]
        right = field[y, x + 1] if x + 1 < w and mask[y, x + 1] else field[y, x]
        left = field[y, x - 1] if x >= 1 and mask[y, x - 1] else field[y, x]
        g = np.array([down - up, right - left])
        flows[:, y, x] = g / max(float(np.hypot(*g)), 1e-20)
    return flows


def reference_compute_masks(flows: Array, cellprob: Array, params: MaskParams | None = None) -> Array:
    params = params or MaskParams()
    h, w = cellprob.shape
    fg = cellprob > params.cellprob_threshold
    fy = (flows[0] * fg).tolist()
    fx = (flows[1] * fg).tolist()
    pixels = list(zip(*np.nonzero(fg), strict=True))
    ends = [_follow_one(fy, fx, float(y), float(x), params.niter, h, w) for y, x in pixels]
    hist = np.zeros((h, w), dtype=np.int64)
    for ey, ex in ends:
        hist[round(ey), round(ex)] += 1
    seeds = []
    for y in range(h):
        for x in range(w):
            v = hist[y, x]
            if v <= SEED_MIN_COUNT:
                continue
            window = hist[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
            if v >= window.max():
                seeds.append((int(v), y, x))
    seeds.sort(reverse=True)
    owner = np.zeros((h, w), dtype=np.int64)
    for label, (_, sy, sx) in enumerate(seeds, start=1):
        if owner[sy, sx]:
            continue
        region = {(sy, sx)}
        for _ in range(GROW_STEPS):
            for y, x in list(region):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and hist[yy, xx] > GROW_MIN_COUNT and not owner[yy, xx]:
                            region.add((yy, xx))
        for y, x in region:
            if not owner[y, x]:
                owner[y, x] = label
    masks = np.zeros((h, w), dtype=np.int64)
    for (y, x), (ey, ex) in zip(pixels, ends, strict=True):
        masks[y, x] = owner[round(ey), round(ex)]
    out = np.zeros((h, w), dtype=np.int32)
    n = 0
    for label, box in enumerate(ndimage.find_objects(masks), start=1):
        if box is None:
            continue
        cell = masks[box] == label
        size = int(cell.sum())
        if size > params.max_size_fraction * h * w:
            continue
        if params.flow_threshold > 0:
            own = _cell_flows(cell)
            error = float((((own - flows[(slice(None), *box)]) ** 2).sum(axis=0)[cell]).mean())
            if error > params.flow_threshold:
                continue
        filled = ndimage.binary_fill_holes(cell)
        if filled.sum() < max(params.min_size, 1):
            continue
        n += 1
        region = out[box]
        region[filled & (region == 0)] = n
    return out

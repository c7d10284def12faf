"""Per-cell statistics of a label mask, vectorised with bincount."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class CellStats:
    """Arrays of length n_cells (labels 1..n in order): area (pixels), centroid (y, x),
    bounding box [min_y, min_x, max_y, max_x) (max exclusive), mean intensity."""

    label: Array
    area: Array
    centroid_y: Array
    centroid_x: Array
    bbox: Array  # int64 [n, 4]
    mean_intensity: Array

    def rows(self) -> list[dict[str, float | int]]:
        return [
            {
                "label": int(self.label[i]), "area": int(self.area[i]),
                "centroid_y": float(self.centroid_y[i]), "centroid_x": float(self.centroid_x[i]),
                "bbox_min_y": int(self.bbox[i, 0]), "bbox_min_x": int(self.bbox[i, 1]),
                "bbox_max_y": int(self.bbox[i, 2]), "bbox_max_x": int(self.bbox[i, 3]),
                "mean_intensity": float(self.mean_intensity[i]),
            }
            for i in range(self.label.size)
        ]  # fmt: skip


#: Rows per band: statistics are accumulated band by band, so the temporaries stay small.
BAND = 1024


def cell_stats(masks: Array, intensity: Array) -> CellStats:
    """masks: int [H, W] labelled 1..n (0 background); intensity: [H, W] (raw, un-normalised).

    Works on the foreground pixels of ``BAND`` rows at a time (memory bounded by the band)."""
    n = int(masks.max()) if masks.size else 0
    area = np.zeros(n + 1, dtype=np.int64)
    sum_y = np.zeros(n + 1)
    sum_x = np.zeros(n + 1)
    sum_i = np.zeros(n + 1)
    big = np.iinfo(np.int64).max
    bbox = np.stack([np.full(n + 1, big), np.full(n + 1, big), np.full(n + 1, -1), np.full(n + 1, -1)], axis=1)
    for y0 in range(0, masks.shape[0], BAND):
        band = masks[y0 : y0 + BAND]
        ys, xs = np.nonzero(band)
        lab = band[ys, xs].astype(np.int64)
        value = intensity[y0 : y0 + BAND][ys, xs].astype(np.float64)
        ys = ys + y0
        area += np.bincount(lab, minlength=n + 1)
        sum_y += np.bincount(lab, weights=ys, minlength=n + 1)
        sum_x += np.bincount(lab, weights=xs, minlength=n + 1)
        sum_i += np.bincount(lab, weights=value, minlength=n + 1)
        np.minimum.at(bbox[:, 0], lab, ys)
        np.minimum.at(bbox[:, 1], lab, xs)
        np.maximum.at(bbox[:, 2], lab, ys + 1)
        np.maximum.at(bbox[:, 3], lab, xs + 1)
    safe = np.maximum(area, 1)
    keep = np.nonzero(area[1:] > 0)[0] + 1
    return CellStats(keep, area[keep], (sum_y / safe)[keep], (sum_x / safe)[keep], bbox[keep], (sum_i / safe)[keep])

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


def cell_stats(masks: Array, intensity: Array) -> CellStats:
    """masks: int [H, W] labelled 1..n (0 background); intensity: [H, W] (raw, un-normalised)."""
    n = int(masks.max()) if masks.size else 0
    flat = masks.ravel().astype(np.int64)
    ys, xs = np.indices(masks.shape)
    area = np.bincount(flat, minlength=n + 1).astype(np.int64)
    safe = np.maximum(area, 1)
    cy = np.bincount(flat, weights=ys.ravel(), minlength=n + 1) / safe
    cx = np.bincount(flat, weights=xs.ravel(), minlength=n + 1) / safe
    mean = np.bincount(flat, weights=intensity.astype(np.float64).ravel(), minlength=n + 1) / safe
    big = np.iinfo(np.int64).max
    bbox = np.stack([np.full(n + 1, big), np.full(n + 1, big), np.full(n + 1, -1), np.full(n + 1, -1)], axis=1)
    np.minimum.at(bbox[:, 0], flat, ys.ravel())
    np.minimum.at(bbox[:, 1], flat, xs.ravel())
    np.maximum.at(bbox[:, 2], flat, ys.ravel() + 1)
    np.maximum.at(bbox[:, 3], flat, xs.ravel() + 1)
    keep = np.nonzero(area[1:] > 0)[0] + 1
    return CellStats(keep, area[keep], cy[keep], cx[keep], bbox[keep], mean[keep])

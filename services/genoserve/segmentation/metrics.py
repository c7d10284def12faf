"""Average precision of instance masks at IoU thresholds, as Cellpose defines it.

AP = TP / (TP + FP + FN), where predicted and true masks are matched one-to-one by the Hungarian
algorithm on IoU (Cellpose ``metrics.average_precision``; the cost favours pairs over the
threshold, then higher IoU), and a matched pair counts as a true positive when IoU >= threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

Array = np.ndarray[Any, Any]


def _relabel(masks: Array) -> tuple[Array, int]:
    """Labels made consecutive 1..n (0 stays background)."""
    values, inverse = np.unique(masks, return_inverse=True)
    inverse = inverse.reshape(masks.shape)
    if values[0] != 0:
        return inverse + 1, len(values)
    return inverse, len(values) - 1


def iou_matrix(true: Array, pred: Array) -> Array:
    """IoU of every true (rows) and predicted (columns) mask; float64 [n_true, n_pred]."""
    t, nt = _relabel(np.asarray(true))
    p, np_ = _relabel(np.asarray(pred))
    overlap = np.bincount(t.ravel() * (np_ + 1) + p.ravel(), minlength=(nt + 1) * (np_ + 1)).reshape(nt + 1, np_ + 1)
    area_t = overlap.sum(axis=1, keepdims=True)
    area_p = overlap.sum(axis=0, keepdims=True)
    union = area_t + area_p - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    return np.asarray(iou[1:, 1:], dtype=np.float64)


def matched_pairs(iou: Array, threshold: float) -> tuple[Array, Array]:
    """(true, predicted) index pairs matched with IoU >= threshold under Cellpose's Hungarian
    matching (the most pairs over the threshold, then the highest IoU)."""
    n_min = min(iou.shape)
    if n_min == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    costs = -(iou >= threshold).astype(np.float64) - iou / (2 * n_min)
    rows, cols = linear_sum_assignment(costs)
    good = iou[rows, cols] >= threshold
    return rows[good], cols[good]


def true_positives(iou: Array, threshold: float) -> int:
    """Matched pairs with IoU >= threshold under Cellpose's Hungarian matching."""
    return len(matched_pairs(iou, threshold)[0])


def average_precision(
    true: Array, pred: Array, thresholds: Sequence[float] = (0.5, 0.75, 0.9)
) -> dict[float, tuple[float, int, int, int]]:
    """Per threshold: (AP, TP, FP, FN) for one image's true and predicted label masks [H, W].

    Both empty gives AP 1.0 (nothing to find, nothing found).
    """
    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    out: dict[float, tuple[float, int, int, int]] = {}
    for th in thresholds:
        tp = true_positives(iou, th)
        fp, fn = n_pred - tp, n_true - tp
        denom = tp + fp + fn
        out[th] = (tp / denom if denom else 1.0, tp, fp, fn)
    return out


def mean_average_precision(
    pairs: Sequence[tuple[Array, Array]], thresholds: Sequence[float] = (0.5, 0.75, 0.9)
) -> dict[float, float]:
    """AP over a set of images from the summed TP/FP/FN counts (each image weighted by its cells)."""
    totals = {th: [0, 0, 0] for th in thresholds}
    for true, pred in pairs:
        for th, (_, tp, fp, fn) in average_precision(true, pred, thresholds).items():
            totals[th][0] += tp
            totals[th][1] += fp
            totals[th][2] += fn
    return {th: (tp / (tp + fp + fn) if tp + fp + fn else 1.0) for th, (tp, fp, fn) in totals.items()}

"""Average precision with Hungarian matching, as Cellpose defines it."""

import numpy as np
import pytest

from genoserve.segmentation import metrics


def squares(offsets: list[tuple[int, int]], size: int = 10) -> np.ndarray:
    m = np.zeros((64, 64), np.int32)
    for i, (y, x) in enumerate(offsets, start=1):
        m[y : y + size, x : x + size] = i
    return m


def test_identical_masks_score_one_whatever_the_label_names() -> None:
    true = squares([(0, 0), (20, 20), (40, 40)])
    pred = np.where(true > 0, 10 - true, 0)
    ap = metrics.average_precision(true, pred)
    assert ap[0.5] == (1.0, 3, 0, 0)
    assert ap[0.9][0] == 1.0


def test_iou_thresholds_and_counts() -> None:
    true = squares([(0, 0), (20, 20)])
    # First predicted square shifted by 2 px: IoU = 80/120 = 0.667; second missing; one extra.
    pred = squares([(2, 0), (45, 45)])
    iou = metrics.iou_matrix(true, pred)
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(80 / 120)
    ap = metrics.average_precision(true, pred)
    assert ap[0.5] == (pytest.approx(1 / 3), 1, 1, 1)  # TP / (TP + FP + FN)
    assert ap[0.75] == (0.0, 0, 2, 2)


def test_hungarian_matching_is_one_to_one() -> None:
    true = squares([(0, 0)], size=20)
    pred = np.zeros_like(true)
    pred[0:20, 0:11] = 1  # IoU 0.55
    pred[0:20, 11:20] = 2  # IoU 0.45
    ap = metrics.average_precision(true, pred, thresholds=(0.5,))
    assert ap[0.5] == (pytest.approx(1 / 2), 1, 1, 0)


def test_empty_cases() -> None:
    empty = np.zeros((8, 8), np.int32)
    assert metrics.average_precision(empty, empty)[0.5][0] == 1.0
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert metrics.average_precision(one, empty)[0.5] == (0.0, 0, 0, 1)
    assert metrics.average_precision(empty, one)[0.5] == (0.0, 0, 1, 0)


def test_mean_ap_sums_counts_over_images() -> None:
    a = squares([(0, 0), (20, 20)])
    b = squares([(0, 0)])
    ap = metrics.mean_average_precision([(a, a), (b, np.zeros_like(b))], thresholds=(0.5,))
    assert ap[0.5] == pytest.approx(2 / 3)

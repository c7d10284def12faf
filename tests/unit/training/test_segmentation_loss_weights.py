"""The training loss' per-pixel weights: small cells and touching boundaries weigh more."""

from __future__ import annotations

import numpy as np

from genoserve.training.segmentation.train import loss_weights


def test_weights_are_one_when_off() -> None:
    masks = np.zeros((20, 20), np.int32)
    masks[2:6, 2:6] = 1
    np.testing.assert_array_equal(loss_weights(masks, 0.0, 3.0, 0.0), np.ones((20, 20), np.float32))


def test_small_cells_and_their_ring_weigh_more_capped() -> None:
    masks = np.zeros((40, 40), np.int32)
    masks[2:6, 2:6] = 1  # 16 px: sqrt(64 / 16) = 2
    masks[20:30, 20:30] = 2  # 100 px: clipped to 1
    masks[35:36, 35:36] = 3  # 1 px: sqrt(64) = 8, capped at 3
    w = loss_weights(masks, 64.0, 3.0, 0.0)
    assert w[3, 3] == 2.0
    assert w[7, 3] == 2.0  # the ring, 2 px out
    assert w[9, 3] == 1.0
    assert w[25, 25] == 1.0
    assert w[35, 35] == 3.0


def test_touching_boundary_pixels_get_the_touch_weight() -> None:
    masks = np.zeros((10, 10), np.int32)
    masks[2:8, 1:5], masks[2:8, 5:9] = 1, 2
    w = loss_weights(masks, 0.0, 3.0, 2.0)
    assert w[4, 4] == 3.0
    assert w[4, 5] == 3.0
    assert w[4, 2] == 1.0  # inside, away from the neighbour
    assert w[0, 0] == 1.0

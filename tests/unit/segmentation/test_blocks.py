"""Block-wise mask reconstruction: the same cells as the whole-image path, labels continuous
across block seams, memory bounded by the block."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from genoserve.segmentation import metrics
from genoserve.segmentation.blocks import compute_masks_blocked, halo_for
from genoserve.segmentation.dynamics import compute_masks
from genoserve.segmentation.flows import masks_to_flows
from genoserve.segmentation.stats import cell_stats
from genoserve.training.segmentation.simulator import SimConfig, simulate

Array = np.ndarray[Any, Any]


@pytest.fixture(scope="module")
def crowded() -> tuple[Array, Array, Array]:
    """A crowded simulated 384x320 image's masks, exact flows and cell-probability logits
    (no tiny nuclei: those under ``min_size`` are dropped whole or in part, wherever they sit)."""
    config = SimConfig(size=(384, 320), diameter=(8.0, 16.0), coverage=(0.4, 0.45), tiny_fraction=0.0)
    _, masks = simulate(np.random.default_rng(5), config)
    flows = masks_to_flows(masks)
    cellprob = np.where(masks > 0, 4.0, -4.0).astype(np.float32)
    return masks, flows, cellprob


def _crossing(masks: Array, seams_y: list[int], seams_x: list[int]) -> int:
    """Number of labels with pixels on both sides of some seam."""
    labels: set[int] = set()
    for s in seams_y:
        labels |= set(np.intersect1d(masks[s - 1], masks[s]).tolist())
    for s in seams_x:
        labels |= set(np.intersect1d(masks[:, s - 1], masks[:, s]).tolist())
    return len(labels - {0})


def test_blocks_give_the_whole_image_masks(crowded: tuple[Array, Array, Array]) -> None:
    truth, flows, cellprob = crowded
    whole = compute_masks(flows, cellprob)
    blocked = compute_masks_blocked(flows, cellprob, block=96, halo=halo_for(16.0))
    # Same cells, same labels (raster order of first pixel), though 12 blocks were run apart.
    np.testing.assert_array_equal(blocked, whole)
    assert metrics.average_precision(truth, blocked)[0.5][0] > 0.95
    # Many cells straddle the seams at multiples of 96, and each is still one mask.
    crossing = _crossing(blocked, [96, 192, 288], [96, 192, 288])
    assert crossing > 20
    assert crossing == _crossing(truth, [96, 192, 288], [96, 192, 288])


def test_small_halo_still_labels_every_pixel_once(crowded: tuple[Array, Array, Array]) -> None:
    _, flows, cellprob = crowded
    whole = compute_masks(flows, cellprob)
    blocked = compute_masks_blocked(flows, cellprob, block=64, halo=4)  # halo smaller than cells
    assert blocked.max() == np.unique(blocked[blocked > 0]).size  # labels 1..n, consecutive
    assert abs(int(blocked.max()) - int(whole.max())) <= 0.1 * whole.max()


def test_an_image_within_one_block_runs_whole(crowded: tuple[Array, Array, Array]) -> None:
    _, flows, cellprob = crowded
    np.testing.assert_array_equal(compute_masks_blocked(flows, cellprob, block=512), compute_masks(flows, cellprob))
    empty = compute_masks_blocked(flows, np.full(cellprob.shape, -5.0, np.float32), block=64)
    assert not empty.any()


def test_stats_in_bands_equal_whole_image_stats(
    crowded: tuple[Array, Array, Array], monkeypatch: pytest.MonkeyPatch
) -> None:
    from genoserve.segmentation import stats

    masks = crowded[0]
    intensity = np.asarray(np.random.default_rng(0).uniform(0, 100, masks.shape), dtype=np.float32)
    whole = cell_stats(masks, intensity)
    monkeypatch.setattr(stats, "BAND", 7)
    banded = cell_stats(masks, intensity)
    for field in ("label", "area", "centroid_y", "centroid_x", "bbox", "mean_intensity"):
        np.testing.assert_allclose(getattr(banded, field), getattr(whole, field), rtol=1e-12)

"""The nuclei simulator: exact masks, varied images, reproducible from a seed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from genoserve.training.segmentation.simulator import SimConfig, dataset, simulate


def test_masks_are_exact_connected_instances() -> None:
    for image, masks in dataset(3, 6):
        assert image.shape == masks.shape == (128, 128)
        assert image.dtype == np.float32
        labels = np.unique(masks[masks > 0])
        assert labels.size > 0
        for label in labels:
            assert ndimage.label(masks == label)[1] == 1  # occlusion never splits a cell
        # Cells are brighter than the background they sit on.
        assert image[masks > 0].mean() > image[masks == 0].mean()


def test_reproducible_and_varied() -> None:
    a = dataset(5, 3)
    b = dataset(5, 3)
    for (ia, ma), (ib, mb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    counts = [int(m.max()) for _, m in dataset(6, 12)]
    assert max(counts) > 3 * min(counts)  # sparse and crowded images


def test_touching_neighbours_occur() -> None:
    touching = 0
    for _, masks in dataset(9, 6, SimConfig(coverage=(0.4, 0.45))):
        grown = ndimage.grey_dilation(masks, size=3)
        touching += int(((grown != masks) & (masks > 0) & (grown > 0)).sum())
    assert touching > 0


def test_size_config_is_respected() -> None:
    _, masks = simulate(np.random.default_rng(1), SimConfig(size=(64, 96), diameter=(6.0, 8.0)))
    assert masks.shape == (64, 96)
    areas = np.bincount(masks.ravel())[1:]
    assert np.median(areas[areas > 0]) < np.pi * 6**2


def test_tiny_faint_nuclei_are_small_and_dim() -> None:
    config = SimConfig(size=(128, 128), diameter=(14.0, 18.0), tiny_fraction=0.3, saturated_fraction=0.0)
    small, large = [], []
    for image, masks in dataset(11, 4, config):
        background = np.median(image[masks == 0])
        for label in np.unique(masks[masks > 0]):
            region = masks == label
            (small if region.sum() < np.pi * 4**2 else large).append(image[region].mean() - background)
    assert len(small) >= 10
    assert len(large) >= 10
    # A typical tiny nucleus is several times fainter than a typical nucleus.
    assert np.median(small) < 0.5 * np.median(large)

"""Percentile normalisation, resizing and tiled inference with blended stitching."""

import itertools

import numpy as np
import pytest

from genoserve.segmentation import normalize, tiling


def test_percentiles_map_to_zero_and_one() -> None:
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(100, 200, (50, 50)), rng.uniform(-5, 5, (50, 50))])
    out = normalize.percentile_normalize(image)
    assert out.dtype == np.float32
    assert out.shape == image.shape
    for c in range(2):
        lo, hi = np.percentile(out[c], [1, 99])
        assert lo == pytest.approx(0, abs=1e-5)
        assert hi == pytest.approx(1, abs=1e-5)


def test_flat_channel_becomes_zero() -> None:
    assert not normalize.percentile_normalize(np.full((1, 8, 8), 7, np.uint16)).any()


def test_resize_shape_and_round_trip() -> None:
    image = np.add.outer(np.arange(40.0), np.arange(30.0))[None].astype(np.float32)
    small = normalize.resize(image, (20, 15))
    assert small.shape == (1, 20, 15)
    back = normalize.resize(small, (40, 30))
    assert np.abs(back - image)[:, 2:-2, 2:-2].max() < 1.0
    assert normalize.scaled_shape((100, 51), 0.5) == (50, 25)  # truncated, as cellpose sizes it
    assert normalize.scaled_shape((256, 256), 17 / 9.0) == (483, 483)
    assert normalize.scaled_shape((3, 3), 0.1) == (1, 1)


@pytest.mark.parametrize("shape", [(700, 333), (256, 256), (100, 50), (257, 1000)])
def test_tiled_pointwise_model_reproduces_the_image(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(1).random((2, *shape)).astype(np.float32)
    calls: list[int] = []

    def forward(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        # An axis of at most one tile is one tile of its length rounded up to the multiple (8).
        assert batch.shape[1:] == (2, min(256, -(-shape[0] // 8) * 8), min(256, -(-shape[1] // 8) * 8))
        return np.concatenate([batch * 3, batch[:, :1] - 1], axis=1)

    out = tiling.run_tiled(image, 256, 0.1, 4, forward, size_multiple=8)
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out[:2], image * 3, atol=1e-5)
    np.testing.assert_allclose(out[2], image[0] - 1, atol=1e-5)
    assert max(calls) <= 4


def test_tiles_overlap_and_cover() -> None:
    layout = tiling.grid((1000, 600), 256, 0.1)
    ys = sorted({y for y, _ in layout.corners})
    assert ys[0] == 0
    assert ys[-1] == 1000 - 256
    assert all(b - a <= 256 * 0.9 + 1 for a, b in itertools.pairwise(ys))
    assert len(ys) == 5  # cellpose's count: ceil(1.2 * 1000 / 256)
    w = tiling.taper(256)
    assert w[128, 128] == pytest.approx(1.0, abs=1e-5)
    assert w[0, 0] < 0.01
    assert w.min() >= 1e-3
    assert tiling.taper(256, (100, 50)).shape == (100, 50)


def test_grid_and_taper_are_cellposes() -> None:
    """Tile starts and the taper as cellpose 3.1's ``make_tiles`` and ``_taper_mask`` (bsize 224)."""
    transforms = pytest.importorskip("cellpose.transforms", reason="needs the import extra (cellpose 3)")
    for shape in [(512, 512), (400, 752), (224, 480), (240, 1000)]:
        _, ysub, xsub, _, _ = transforms.make_tiles(np.zeros((1, *shape), np.float32), bsize=224, tile_overlap=0.1)
        corners = tuple((int(y[0]), int(x[0])) for y, x in zip(ysub, xsub, strict=True))
        assert tiling.grid(shape, 224, 0.1).corners == corners
        assert tiling.tile_count(shape, 224, 0.1) == len(corners)
    np.testing.assert_allclose(tiling.taper(224), transforms._taper_mask(224, 224), atol=1e-6)
    np.testing.assert_allclose(tiling.taper(256), transforms._taper_mask(256, 256), atol=1e-6)


def test_stitching_blends_across_seams() -> None:
    """Each tile returns a constant (its index): stitched values vary smoothly, no hard seam."""
    image = np.zeros((1, 256, 480), np.float32)
    layout = tiling.grid((256, 480), 256, 0.1)
    assert len(layout.corners) == 3
    stitcher = tiling.Stitcher(layout)
    stitcher.add(np.stack([np.full((1, 256, 256), k, np.float32) for k in range(3)]))
    row = stitcher.result()[0, 128]
    assert row[0] == 0
    assert row[-1] == 2
    assert np.all(np.diff(row) >= -1e-6)
    assert np.abs(np.diff(row)).max() < 0.2
    with pytest.raises(ValueError, match="tiles added"):
        tiling.Stitcher(layout).result()
    assert image.shape == (1, 256, 480)

"""Image decoding and checks, label files, overlays, per-cell stats."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from genoserve.core.errors import InvalidArgument
from genoserve.segmentation import images, stats


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def test_decode_tiff_and_png(real_image: np.ndarray) -> None:
    assert np.array_equal(images.decode(tiff_bytes(real_image)), real_image)
    assert np.array_equal(images.decode(png_bytes(real_image)), real_image)
    rgb = np.dstack([real_image] * 3)
    assert images.decode(png_bytes(rgb)).shape == (256, 256, 3)


@pytest.mark.parametrize(
    ("data", "rule"),
    [(b"", "is empty"), (b"GIF89a....", "TIFF or PNG"), (b"\x89PNG\r\n\x1a\n broken", "cannot be decoded")],
)
def test_decode_rejects_bad_bytes(data: bytes, rule: str) -> None:
    with pytest.raises(InvalidArgument, match=rule) as info:
        images.decode(data)
    assert info.value.violations[0].field == "image.encoded"


def test_check_shapes_and_channels() -> None:
    assert images.check(np.zeros((20, 30), np.uint8), "image", 10_000).shape == (20, 30, 1)
    assert images.check(np.zeros((2, 20, 30), np.uint16), "image", 10_000).shape == (20, 30, 2)
    assert images.check(np.zeros((20, 30, 3), np.uint8), "image", 10_000).shape == (20, 30, 3)


@pytest.mark.parametrize(
    ("array", "field", "rule"),
    [
        (np.zeros((4, 4), np.complex64), "image.dtype", "must be one of"),
        (np.zeros((2, 2, 2, 2), np.uint8), "image.shape", "rank 4"),
        (np.zeros((0, 5), np.uint8), "image.shape", "empty"),
        (np.zeros((200, 200), np.uint8), "image.shape", "exceeds the limit"),
        (np.full((5, 5), np.nan, np.float32), "image.data", "NaN"),
        (np.zeros((20, 20, 12), np.uint8), "image.shape", "at most 8 channels"),
    ],
)
def test_check_rejects(array: np.ndarray, field: str, rule: str) -> None:
    with pytest.raises(InvalidArgument, match=rule) as info:
        images.check(array, "image", 10_000)
    assert info.value.violations[0].field == field


def test_select_channels() -> None:
    image = np.dstack([np.full((4, 5), v, np.uint8) for v in (10, 20, 60)])
    assert images.select_channels(image, [2], 1)[0, 0, 0] == 60
    assert images.select_channels(image, [], 1)[0, 0, 0] == pytest.approx(30)
    with pytest.raises(InvalidArgument, match=r"in \[0, 3\)"):
        images.select_channels(image, [3], 1)
    with pytest.raises(InvalidArgument, match="takes 1 channel"):
        images.select_channels(image, [0, 1], 1)


def test_read_images_splits_multi_page_tiffs(tmp_path) -> None:
    stack = np.arange(5 * 64 * 64, dtype=np.uint16).reshape(5, 64, 64)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    pages = images.read_images(str(path))
    assert len(pages) == 5
    assert np.array_equal(pages[3], stack[3])
    single = tmp_path / "one.png"
    single.write_bytes(png_bytes(stack[0].astype(np.uint8)))
    assert len(images.read_images(str(single))) == 1
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(InvalidArgument, match=r"bad\.tif"):
        images.read_images(str(bad))


def test_label_tiff_and_overlay(tmp_path, real_masks: np.ndarray, real_image: np.ndarray) -> None:
    path = tmp_path / "labels.tif"
    images.write_labels(str(path), real_masks)
    back = tifffile.imread(path)
    assert back.dtype == np.uint16
    assert np.array_equal(back, real_masks)
    assert images.label_dtype(70_000) == np.uint32
    png = Image.open(io.BytesIO(images.overlay_png(real_image, real_masks)))
    rgb = np.asarray(png)
    assert rgb.shape == (256, 256, 3)
    edge = images.outlines(real_masks)
    assert edge.sum() > 0
    assert not edge[real_masks == 0].any()
    # Outline pixels are coloured, the rest stays grey.
    assert (rgb[edge].std(axis=1) > 0).mean() > 0.5
    assert (rgb[~edge].std(axis=1) == 0).all()


def test_cell_stats() -> None:
    masks = np.zeros((10, 12), np.int32)
    masks[1:4, 2:6] = 1
    masks[6:9, 8:9] = 2
    intensity = np.arange(120, dtype=np.float32).reshape(10, 12)
    s = stats.cell_stats(masks, intensity)
    assert list(s.label) == [1, 2]
    assert list(s.area) == [12, 3]
    assert s.centroid_y[0] == pytest.approx(2.0)
    assert s.centroid_x[0] == pytest.approx(3.5)
    assert s.bbox.tolist() == [[1, 2, 4, 6], [6, 8, 9, 9]]
    assert s.mean_intensity[1] == pytest.approx(intensity[6:9, 8].mean())
    assert s.rows()[1]["bbox_max_y"] == 9

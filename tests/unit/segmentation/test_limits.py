"""Segmentation request limits: a file's declared size is checked before it is decoded, the
network's tiled work after rescaling and padding is bounded, and arrays sent to the network itself
follow the model's size rule."""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.registry import read_spec
from genoserve.segmentation import images, pipeline, tiling
from genoserve.segmentation.contract import SegmentationContract
from tests.support.server import REPO

Array = np.ndarray[Any, Any]


def tiff_bytes(array: Array, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    photometric = "rgb" if array.ndim == 3 and array.shape[-1] == 3 else "minisblack"
    tifffile.imwrite(buffer, array, photometric=photometric, **kwargs)
    return buffer.getvalue()


def png_bytes(array: Array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def contract() -> SegmentationContract:
    return SegmentationContract.of(read_spec(REPO / "models" / "cellpose-nuclei"))


def test_a_tiff_declaring_too_many_pixels_is_refused_without_decoding_it() -> None:
    data = tiff_bytes(np.zeros((2000, 2000), np.uint8), compression="zlib")
    assert len(data) < 50_000
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument) as info:
            images.decode(data, "image.encoded", max_pixels=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # decoding would allocate 4 MB
    [violation] = info.value.violations
    assert violation.field == "image.encoded.shape"
    assert violation.description == (
        "the TIFF declares 2000x2000 = 4000000 pixels exceeds the limit segmentation.max_pixels = 10000"
    )


def test_a_png_declaring_too_many_pixels_is_refused_naming_the_setting() -> None:
    data = png_bytes(np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(
        InvalidArgument,
        match=r"the PNG declares 300x400 = 120000 pixels exceeds the limit segmentation\.max_pixels = 10000",
    ):
        images.decode(data, "image.encoded", max_pixels=10_000)


def test_a_png_over_pils_own_bomb_limit_is_refused_by_the_setting() -> None:
    """PIL's Image.open refuses images over 2 x MAX_IMAGE_PIXELS itself, before its size can be
    named; the declared size is read first, so the refusal names the setting."""
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    header = png_bytes(np.zeros((1, 1), np.uint8))
    # The same PNG with a patched IHDR size (and CRC): only the header is read before the refusal.
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">II", side, side) + header[24:29]
    patched = header[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + header[33:]
    with pytest.raises(InvalidArgument, match=f"the PNG declares {side}x{side}"):
        images.decode(patched, "image.encoded", max_pixels=4096 * 4096)


@pytest.mark.parametrize(
    ("array", "rule"),
    [
        (np.zeros((3, 4, 20, 20), np.uint8), "rank 4"),  # [pages, H, W, samples]
        (np.zeros((20, 20, 12), np.uint8), "at most 8 channels"),
    ],
)
def test_declared_layouts_check_cannot_take_are_refused_before_decoding(array: Array, rule: str) -> None:
    with pytest.raises(InvalidArgument, match=rule):
        images.decode(tiff_bytes(array), "image.encoded", max_pixels=10_000)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(64 * 48, dtype=np.uint16).reshape(64, 48),
        np.arange(64 * 48 * 3, dtype=np.uint8).reshape(64, 48, 3),
        np.arange(3 * 64 * 48, dtype=np.float32).reshape(3, 64, 48),  # pages, stored channels first
    ],
)
def test_images_within_the_limit_decode_as_before(array: Array) -> None:
    data = tiff_bytes(array)
    decoded = images.decode(data, "image.encoded", max_pixels=64 * 48)
    np.testing.assert_array_equal(decoded, tifffile.imread(io.BytesIO(data)))
    assert images.check(decoded, "image", 64 * 48).shape[:2] == (64, 48)


def test_each_page_of_a_stack_is_checked_before_it_is_decoded(tmp_path: Any) -> None:
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((10, 10), np.uint8))
        tif.write(np.zeros((500, 500), np.uint8))
    assert len(images.read_images(str(path))) == 2
    with pytest.raises(InvalidArgument, match=r"the TIFF page declares 500x500 = 250000 pixels"):
        images.read_images(str(path), max_pixels=10_000)


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 20_000), (256, 256), (257, 257), (700, 500), (1000, 1000), (487, 2053), (4096, 4096)]
)
def test_tile_count_is_the_grids(shape: tuple[int, int]) -> None:
    assert tiling.tile_count(shape, 256, 0.1) == len(tiling.grid(shape, 256, 0.1).corners)


def test_the_networks_work_is_counted_after_rescaling_and_padding(contract: SegmentationContract) -> None:
    pipeline.check_network_size((1000, 1000), contract, 0.0, 3_000_000, "image")  # 25 tiles
    with pytest.raises(InvalidArgument) as info:
        pipeline.check_network_size((256, 256), contract, 2.0, 3_000_000, "image.array")
    [violation] = info.value.violations
    assert violation.field == "image.array.shape"
    assert violation.description == (
        "the 256x256 image rescaled for diameter 2 (the model's cell diameter is 12) to 1536x1536 runs as 64 tiles "
        "of 256x256 = 4194304 network pixels, which exceeds segmentation.max_network_pixels = 3000000"
    )
    with pytest.raises(InvalidArgument, match=r"the 300x20000 image runs as 188 tiles of 256x256 = 12320768"):
        pipeline.check_network_size((300, 20_000), contract, 0.0, 3_000_000, "image")
    # An axis shorter than a tile runs as tiles of its length rounded up to size_multiple: 94 x 8 x 256.
    pipeline.check_network_size((1, 20_000), contract, 0.0, 94 * 8 * 256, "image")
    with pytest.raises(InvalidArgument, match=r"the 1x20000 image runs as 94 tiles of 8x256 = 192512"):
        pipeline.check_network_size((1, 20_000), contract, 0.0, 94 * 8 * 256 - 1, "image")
    assert pipeline.network_shape((256, 256), contract, 24.0) == (128, 128)
    assert pipeline.network_shape((257, 257), contract, 24.0) == (128, 128)  # truncated, as cellpose sizes it


def test_padding_is_cellposes() -> None:
    """``pad`` 8 pads as cellpose's ``transforms.get_pad_yx`` (to multiples of 16, 8 or more a side)."""
    transforms = pytest.importorskip("cellpose.transforms", reason="needs the import extra (cellpose 3)")
    for shape in [(482, 482), (483, 150), (512, 17), (1, 1), (256, 255)]:
        assert pipeline.padding(shape, 8) == tuple(transforms.get_pad_yx(*shape))
    assert pipeline.padding((482, 100), 0) == (0, 0, 0, 0)


def test_every_image_within_max_pixels_fits_the_default_network_limit(contract: SegmentationContract) -> None:
    """The default (3 x max_pixels) takes any image within max_pixels whose sides are a tile or more,
    at its own scale, however oblong."""
    max_pixels = 4096 * 4096
    for h in [256, 257, 300, 487, 700, 1000, 2053, 4096]:
        w = max_pixels // h
        pipeline.check_network_size((h, w), contract, 0.0, 3 * max_pixels, "image")


@pytest.mark.parametrize(("h", "w"), [(1, 1), (17, 33), (8, 12), (264, 8), (0, 8)])
def test_network_inputs_must_be_multiples_of_8_up_to_one_tile(contract: SegmentationContract, h: int, w: int) -> None:
    with pytest.raises(InvalidArgument, match=f"multiples of 8 between 8 and 256 .* got {h}x{w}"):
        contract.check_network_input([1, 1, h, w], "inputs[image]")


def test_network_inputs_of_the_rule_pass(contract: SegmentationContract) -> None:
    for shape in ([1, 1, 8, 8], [4, 1, 16, 256], [1, 1, 256, 256]):
        contract.check_network_input(shape, "inputs[image]")
    contract.check_network_input([1, 8, 8], "inputs[image]")  # other ranks: the declared-input check's
    assert contract.size_multiple == 8

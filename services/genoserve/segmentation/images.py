"""Image files and arrays in, checked [C, H, W] out; label TIFFs and outline overlays back.

Accepted images: rank 2 [H, W] or rank 3 [H, W, C] (channels last, as TIFF/PNG store RGB) with
C <= ``MAX_CHANNELS``; a rank-3 TIFF stored channels-first ([C, H, W], C <= ``MAX_CHANNELS`` and
smaller than H and W) is moved to channels last. Every rule broken raises ``InvalidArgument``
naming the field and the rule; nothing here crashes on bad input.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin
from scipy import ndimage

from genoserve.core.errors import InvalidArgument, clipped

Array = np.ndarray[Any, Any]

MAX_CHANNELS = 8
SUPPORTED_DTYPES = ("uint8", "uint16", "int8", "int16", "int32", "uint32", "float16", "float32", "float64")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode(data: bytes, field: str = "image.encoded", max_pixels: int | None = None) -> Array:
    """TIFF or PNG bytes -> the stored array (pages of a multi-page TIFF stacked first).

    With ``max_pixels`` (setting ``segmentation.max_pixels``), the image the file declares in its
    header is checked as ``check`` checks arrays (layout, channels, pixels) before anything is
    decoded: a small compressed file may declare gigabytes of pixels."""
    if not data:
        raise InvalidArgument.field(field, "is empty")
    try:
        if data[:4] in TIFF_MAGIC:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                if max_pixels is not None and tif.series:
                    check_shape(tuple(tif.series[0].shape), field, max_pixels, declared="TIFF")
                array = np.asarray(tif.asarray())
            if array.size == 0:
                raise InvalidArgument.field(field, "cannot be decoded: the TIFF holds no image data")
            return array
        if data[:8] == _PNG_MAGIC:
            # The PNG plugin itself, not Image.open: its decompression-bomb check would refuse a
            # huge image before its size could be checked against (and named as) the setting.
            opener = PngImagePlugin.PngImageFile if max_pixels is not None else Image.open
            with opener(io.BytesIO(data)) as opened:
                if max_pixels is not None:
                    width, height = opened.size
                    check_shape((height, width), field, max_pixels, declared="PNG")
                opened.load()
                im: Image.Image = opened
                if im.mode in ("P", "LA", "PA", "1", "CMYK", "YCbCr"):
                    im = im.convert("RGBA" if "A" in im.mode or im.mode == "P" else "RGB")
                return np.asarray(im)
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument.field(field, f"cannot be decoded: {clipped(str(exc), 300)}") from exc
    raise InvalidArgument.field(field, "must be TIFF or PNG bytes (unknown file signature)")


def read_images(path: str, max_pixels: int | None = None) -> list[Array]:
    """The images of a TIFF/PNG file: one per page of a multi-page TIFF. Errors name the path.
    ``max_pixels``: as for ``decode``, each page's declared size checked before it is decoded."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] in TIFF_MAGIC:
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                if len(tif.pages) > 1:
                    out = []
                    for page in tif.pages:
                        if max_pixels is not None:
                            check_shape(tuple(page.shape), path, max_pixels, declared="TIFF page")
                        out.append(np.asarray(page.asarray()))
                    return out
        except InvalidArgument:
            raise
        except Exception as exc:
            raise InvalidArgument.field(path, f"cannot be decoded: {clipped(str(exc), 300)}") from exc
    return [decode(data, path, max_pixels)]


def _hwc(shape: tuple[int, ...], field: str) -> tuple[int, int, int]:
    """The [H, W, C] that ``check`` reads an array of ``shape`` as."""
    if len(shape) == 3 and shape[0] <= MAX_CHANNELS < min(shape[1], shape[2]):
        return shape[1], shape[2], shape[0]  # stored channels first
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) != 3:
        raise InvalidArgument.field(f"{field}.shape", f"must be [H, W] or [H, W, C], got rank {len(shape)}")
    return shape[0], shape[1], shape[2]


def check_shape(
    shape: tuple[int, ...], field: str, max_pixels: int, min_side: int = 1, declared: str = ""
) -> tuple[int, int, int]:
    """``check``'s rules on a shape alone (also a file's declared one, before decoding; ``declared``
    names the format in messages); the [H, W, C] it is read as."""
    h, w, c = _hwc(shape, field)
    if h < min_side or w < min_side or c < 1:
        raise InvalidArgument.field(f"{field}.shape", f"empty or under {min_side} pixels: {list(shape)}")
    if c > MAX_CHANNELS:
        raise InvalidArgument.field(f"{field}.shape", f"at most {MAX_CHANNELS} channels (last axis), got {c}")
    if h * w > max_pixels:
        what = f"the {declared} declares {h}x{w}" if declared else f"{h}x{w}"
        raise InvalidArgument.field(
            f"{field}.shape", f"{what} = {h * w} pixels exceeds the limit segmentation.max_pixels = {max_pixels}"
        )
    return h, w, c


def check(array: Array, field: str, max_pixels: int, min_side: int = 1) -> Array:
    """Validate one image and return it as [H, W, C] (C >= 1), dtype unchanged."""
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise InvalidArgument.field(f"{field}.dtype", f"must be one of {list(SUPPORTED_DTYPES)}, got {array.dtype}")
    h, w, c = check_shape(array.shape, field, max_pixels, min_side)
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.shape != (h, w, c):
        array = np.moveaxis(array, 0, -1)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgument.field(f"{field}.data", "contains NaN or infinite values")
    return array


def select_channels(image: Array, channels: Sequence[int], want: int, field: str = "channels") -> Array:
    """[H, W, C] -> float32 [want, H, W]: the listed channels, or (none listed) the mean of all
    channels when ``want`` is 1, else the first ``want`` channels."""
    c = image.shape[2]
    if channels:
        if len(channels) != want:
            raise InvalidArgument.field(field, f"the model takes {want} channel(s), {len(channels)} given")
        bad = [i for i in channels if not 0 <= i < c]
        if bad:
            raise InvalidArgument.field(field, f"channel indexes must be in [0, {c}), got {bad}")
        picked = image[:, :, list(channels)].astype(np.float32)
    elif want == 1:
        picked = image.astype(np.float32).mean(axis=2, keepdims=True)
    else:
        if c < want:
            raise InvalidArgument.field(field, f"the model takes {want} channels, the image has {c}")
        picked = image[:, :, :want].astype(np.float32)
    return np.ascontiguousarray(np.moveaxis(picked, -1, 0))


def label_dtype(n_cells: int) -> np.dtype[Any]:
    """uint16 while the labels fit, else uint32."""
    return np.dtype(np.uint16) if n_cells < 65536 else np.dtype(np.uint32)


def write_labels(path: str, masks: Array) -> None:
    """A label TIFF (uint16 or uint32, zlib-compressed)."""
    n = int(masks.max()) if masks.size else 0
    tifffile.imwrite(path, masks.astype(label_dtype(n)), compression="zlib")


def write_label_pages(path: str, pages: Sequence[Array]) -> None:
    """A multi-page label TIFF, page k = ``pages[k]`` (shapes may differ); one dtype for all
    pages (uint16, or uint32 when any page needs it), zlib-compressed."""
    n = max((int(m.max()) if m.size else 0) for m in pages) if pages else 0
    dtype = label_dtype(n)
    with tifffile.TiffWriter(path) as tif:
        for masks in pages:
            tif.write(masks.astype(dtype), compression="zlib", photometric="minisblack")


def outlines(masks: Array) -> Array:
    """bool [H, W]: mask pixels with a 4-neighbour of another label (or background)."""
    eroded = ndimage.grey_erosion(masks, size=(3, 3), mode="nearest")
    dilated = ndimage.grey_dilation(masks, size=(3, 3), mode="nearest")
    return np.asarray((masks > 0) & ((eroded != masks) | (dilated != masks)))


def overlay_png(image: Array, masks: Array) -> bytes:
    """PNG bytes: the image (grey, 1st-99th percentile stretch) with mask outlines in colour."""
    grey = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    lo, hi = np.percentile(grey, [1, 99])
    scaled = np.clip((grey - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.repeat((scaled * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    edge = outlines(masks)
    hue = (masks.astype(np.int64) * 2654435761) % 360
    colours = np.stack([(hue + k * 120) % 360 for k in range(3)], axis=-1)
    rgb[edge] = np.clip(np.abs(colours[edge] - 180) * 2, 64, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()

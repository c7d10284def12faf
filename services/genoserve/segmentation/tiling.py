"""Overlapping tiles and blended stitching, so that any image size runs through fixed-size tiles,
placed and blended as Cellpose 3.1 does (``transforms.make_tiles`` and ``average_tiles``).

Tiles are ``tile x tile``. Along an axis of L > tile pixels there are ceil((1 + 2 overlap) L /
tile) tiles, their starts spread evenly from 0 to L - tile and truncated to whole pixels (so
neighbours overlap by at least ``overlap`` of a tile; Cellpose's ``tile_overlap``, default 0.1).
An axis of at most one tile is one tile of L pixels rounded up to ``size_multiple`` (zeros
beyond; Cellpose's images are padded to multiples of 16 by then, so that is L itself). Each
tile's output is weighted by Cellpose's taper (``transforms._taper_mask``: a sigmoid that is 1 in
the middle and falls to about 0.07 over the outer 20-odd pixels of each edge, where the network
sees least context), and the stitched value at a pixel is the weighted mean over the tiles
covering it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

#: Cellpose's taper: the sigmoid's width and its midpoint's distance from the tile's edge (pixels).
TAPER_SIGMA = 7.5
TAPER_EDGE = 20


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie: top-left corners in the (padded) image."""

    shape: tuple[int, int]  # image (H, W) before padding
    padded: tuple[int, int]  # at least one tile each way
    tile: tuple[int, int]  # (height, width) of every tile: ``tile`` each way, less on a small axis
    corners: tuple[tuple[int, int], ...]
    size: int = 0  # the full tile (``tile`` of ``grid``): sets the taper

    @property
    def network_pixels(self) -> int:
        """Pixels the network computes for the image: tiles x tile area."""
        return len(self.corners) * self.tile[0] * self.tile[1]


def _axis(length: int, tile: int, overlap: float, size_multiple: int) -> tuple[list[int], int]:
    """(tile starts, tile length) along an axis of ``length`` pixels."""
    if length <= tile:
        return [0], min(tile, -(-length // size_multiple) * size_multiple)
    count = int(np.ceil((1.0 + 2.0 * overlap) * length / tile))
    return [int(v) for v in np.linspace(0, length - tile, count).astype(int)], tile


def tile_count(shape: tuple[int, int], tile: int, overlap: float = 0.1) -> int:
    """How many tiles ``grid`` cuts an image of ``shape`` into, without listing them."""
    n = [1 if length <= tile else int(np.ceil((1.0 + 2.0 * overlap) * length / tile)) for length in shape]
    return n[0] * n[1]


def grid(shape: tuple[int, int], tile: int, overlap: float = 0.1, size_multiple: int = 1) -> TileGrid:
    """The tiles covering an image of ``shape`` with at least ``overlap`` (0 <= overlap < 1); an
    axis of at most one tile is one tile of its length rounded up to ``size_multiple``."""
    if tile < 1 or not 0.0 <= overlap < 1.0 or size_multiple < 1:
        raise ValueError(f"need tile, size_multiple >= 1 and 0 <= overlap < 1, got {tile}, {size_multiple}, {overlap}")
    ys, th = _axis(shape[0], tile, overlap, size_multiple)
    xs, tw = _axis(shape[1], tile, overlap, size_multiple)
    padded = (max(shape[0], th), max(shape[1], tw))
    return TileGrid(shape, padded, (th, tw), tuple((y, x) for y in ys for x in xs), tile)


def taper(tile: int, shape: tuple[int, int] | None = None) -> Array:
    """Blending weight float32 [h, w] (``shape``, default ``tile`` x ``tile``): Cellpose's
    ``_taper_mask`` for a ``tile`` tile (a sigmoid of the distance from the middle, TAPER_SIGMA
    wide, at 0.5 TAPER_EDGE pixels in from each edge), its middle h x w for a smaller tile."""
    h, w = shape or (tile, tile)
    size = max(tile, h, w)
    distance = np.abs(np.arange(size) - (size - 1) / 2.0)
    ramp = 1.0 / (1.0 + np.exp((distance - (size / 2.0 - TAPER_EDGE)) / TAPER_SIGMA))
    mask = ramp[:, None] * ramp[None, :]
    mid = size // 2
    return np.asarray(mask[mid - h // 2 : mid + h // 2 + h % 2, mid - w // 2 : mid + w // 2 + w % 2], dtype=np.float32)


def tiles(image: Array, layout: TileGrid) -> Iterator[Array]:
    """Yield each tile float32 [C, tile, tile] of image [C, H, W], in ``layout.corners`` order."""
    pad_y = layout.padded[0] - image.shape[1]
    pad_x = layout.padded[1] - image.shape[2]
    padded = np.pad(image, ((0, 0), (0, pad_y), (0, pad_x))) if pad_y or pad_x else image
    th, tw = layout.tile
    for y, x in layout.corners:
        yield np.asarray(padded[:, y : y + th, x : x + tw], dtype=np.float32)


class Stitcher:
    """Accumulates tile outputs [B, K, t, t] (in ``layout.corners`` order) into [K, H, W]."""

    def __init__(self, layout: TileGrid) -> None:
        self.layout = layout
        self.weight = taper(layout.size or max(layout.tile), layout.tile)
        self.norm = np.zeros(layout.padded, dtype=np.float32)
        self.out: Array | None = None
        self.done = 0
        self.finished = False

    def add(self, results: Array) -> None:
        th, tw = self.layout.tile
        if self.out is None:
            self.out = np.zeros((results.shape[1], *self.layout.padded), dtype=np.float32)
        for k in range(results.shape[0]):
            y, x = self.layout.corners[self.done + k]
            self.out[:, y : y + th, x : x + tw] += results[k] * self.weight
            self.norm[y : y + th, x : x + tw] += self.weight
        self.done += results.shape[0]

    def result(self) -> Array:
        """The stitched float32 [K, H, W]; every tile must have been added."""
        if self.out is None or self.done != len(self.layout.corners):
            raise ValueError(f"{self.done} of {len(self.layout.corners)} tiles added")
        h, w = self.layout.shape
        if not self.finished:
            self.out /= self.norm  # in place: no second full-size copy
            self.finished = True
        return np.ascontiguousarray(self.out[:, :h, :w])  # a view unless the image was padded


def batches(image: Array, layout: TileGrid, batch: int) -> Iterator[Array]:
    """Tiles of image [C, H, W] stacked ``batch`` at a time: float32 [<=batch, C, t, t]."""
    pending: list[Array] = []
    for piece in tiles(image, layout):
        pending.append(piece)
        if len(pending) == batch:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)


def run_tiled(
    image: Array, tile: int, overlap: float, batch: int, forward: Callable[[Array], Array], size_multiple: int = 1
) -> Array:
    """Run ``forward`` ([B, C, th, tw] -> [B, K, th, tw]) over the tiles of image [C, H, W]
    (``grid``), ``batch`` tiles per call, and stitch: float32 [K, H, W]. Memory: one batch of
    tiles plus the output."""
    layout = grid((image.shape[1], image.shape[2]), tile, overlap, size_multiple)
    stitcher = Stitcher(layout)
    for chunk in batches(image, layout, batch):
        stitcher.add(forward(chunk))
    return stitcher.result()

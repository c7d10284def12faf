"""Overlapping tiles and blended stitching, so that any image size runs through fixed-size tiles.

Tiles are ``tile x tile``; neighbouring tiles overlap by at least ``overlap`` of a tile (Cellpose's
``tile_overlap``, default 0.1). Each tile's output is weighted by a taper that is 1 in the middle
and falls smoothly towards the tile's edges (where the network sees least context), and the
stitched value at a pixel is the weighted mean over the tiles covering it. Images smaller than a
tile are zero-padded (normalised background) to one tile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie: top-left corners in the (padded) image."""

    shape: tuple[int, int]  # image (H, W) before padding
    padded: tuple[int, int]  # at least one tile each way
    tile: int
    corners: tuple[tuple[int, int], ...]


def _count(length: int, tile: int, overlap: float) -> int:
    """Tiles along one axis of ``length`` pixels (padded to at least one tile)."""
    if length <= tile:
        return 1
    return int(np.ceil((length - tile) / (tile * (1.0 - overlap)))) + 1


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    return [round(v) for v in np.linspace(0, length - tile, _count(length, tile, overlap))]


def tile_count(shape: tuple[int, int], tile: int, overlap: float = 0.1) -> int:
    """How many tiles ``grid`` cuts an image of ``shape`` into, without listing them."""
    return _count(shape[0], tile, overlap) * _count(shape[1], tile, overlap)


def grid(shape: tuple[int, int], tile: int, overlap: float = 0.1) -> TileGrid:
    """The tiles covering an image of ``shape`` with at least ``overlap`` (0 <= overlap < 1)."""
    if tile < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < 1, got {tile}, {overlap}")
    padded = (max(shape[0], tile), max(shape[1], tile))
    corners = tuple((y, x) for y in _starts(padded[0], tile, overlap) for x in _starts(padded[1], tile, overlap))
    return TileGrid(shape, padded, tile, corners)


def taper(tile: int, margin: float = 0.1) -> Array:
    """Blending weight float32 [tile, tile]: 1 inside, a raised-cosine fall over ``margin`` of
    the tile towards each edge, never below 1e-3 (so every covered pixel has weight)."""
    ramp_len = max(1, round(tile * margin))
    ramp = np.ones(tile, dtype=np.float64)
    edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len) + 0.5) / ramp_len)
    ramp[:ramp_len] = np.minimum(ramp[:ramp_len], edge)
    ramp[tile - ramp_len :] = np.minimum(ramp[tile - ramp_len :], edge[::-1])
    return np.maximum(np.outer(ramp, ramp), 1e-3).astype(np.float32)


def tiles(image: Array, layout: TileGrid) -> Iterator[Array]:
    """Yield each tile float32 [C, tile, tile] of image [C, H, W], in ``layout.corners`` order."""
    pad_y = layout.padded[0] - image.shape[1]
    pad_x = layout.padded[1] - image.shape[2]
    padded = np.pad(image, ((0, 0), (0, pad_y), (0, pad_x))) if pad_y or pad_x else image
    t = layout.tile
    for y, x in layout.corners:
        yield np.asarray(padded[:, y : y + t, x : x + t], dtype=np.float32)


class Stitcher:
    """Accumulates tile outputs [B, K, t, t] (in ``layout.corners`` order) into [K, H, W]."""

    def __init__(self, layout: TileGrid) -> None:
        self.layout = layout
        self.weight = taper(layout.tile)
        self.norm = np.zeros(layout.padded, dtype=np.float32)
        self.out: Array | None = None
        self.done = 0
        self.finished = False

    def add(self, results: Array) -> None:
        t = self.layout.tile
        if self.out is None:
            self.out = np.zeros((results.shape[1], *self.layout.padded), dtype=np.float32)
        for k in range(results.shape[0]):
            y, x = self.layout.corners[self.done + k]
            self.out[:, y : y + t, x : x + t] += results[k] * self.weight
            self.norm[y : y + t, x : x + t] += self.weight
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


def run_tiled(image: Array, tile: int, overlap: float, batch: int, forward: Callable[[Array], Array]) -> Array:
    """Run ``forward`` ([B, C, t, t] -> [B, K, t, t]) over the tiles of image [C, H, W], ``batch``
    tiles per call, and stitch: float32 [K, H, W]. Memory: one batch of tiles plus the output."""
    layout = grid((image.shape[1], image.shape[2]), tile, overlap)
    stitcher = Stitcher(layout)
    for chunk in batches(image, layout, batch):
        stitcher.add(forward(chunk))
    return stitcher.result()

"""One image through the family: prepare (select channels, normalise, rescale, pad; then tile),
then finish (stitched network output -> padding cropped -> flows and probability at full size ->
masks -> stats).

Rescaling and padding follow Cellpose 3.1 (``models.CellposeModel._run_net`` and ``core.run_net``):
the rescaled size is truncated, int(H * scale) x int(W * scale), and the rescaled image gets
``pad`` zero pixels on each side plus what makes it a multiple of 2 * ``pad``
(``transforms.get_pad_yx``), so that cells at the image's edge see zeros beyond it and the tiles
lie where Cellpose's lie.

The network itself is called by the caller (online: the batcher; bulk: the loaded session), so
the same code serves both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.core.errors import InvalidArgument
from genoserve.segmentation import tiling
from genoserve.segmentation.blocks import BLOCK, compute_masks_blocked, halo_for
from genoserve.segmentation.contract import SegmentationContract
from genoserve.segmentation.dynamics import FollowFn, MaskParams
from genoserve.segmentation.normalize import percentile_normalize, resize, scaled_shape
from genoserve.segmentation.stats import CellStats, cell_stats

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Prepared:
    """A normalised (rescaled, padded) image float32 [C, h, w] and how to get back to [H, W]."""

    network_input: Array
    shape: tuple[int, int]
    intensity: Array  # float32 [H, W]: mean of the selected raw channels, for per-cell stats
    cell_diameter: float  # expected cell size at full resolution (pixels): sets the blocks' halo
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right) padding to crop off


@dataclass(frozen=True)
class Segmented:
    masks: Array  # int32 [H, W], labels 1..n
    flows: Array  # float32 [2, H, W] (dY, dX)
    cellprob: Array  # float32 [H, W] logits
    stats: CellStats

    @property
    def n_cells(self) -> int:
        return int(self.stats.label.size)


def check_params(diameter: float, params: MaskParams) -> None:
    """Raise InvalidArgument naming the request field for out-of-range parameters."""
    if not np.isfinite(diameter) or diameter < 0:
        raise InvalidArgument.field("diameter", f"must be >= 0 (0: the model's own), got {diameter}")
    if diameter and not 2.0 <= diameter <= 1000.0:
        raise InvalidArgument.field("diameter", f"must be between 2 and 1000 pixels, got {diameter}")
    if not 0 < params.niter <= 10000:
        raise InvalidArgument.field("niter", f"must be in 1..10000, got {params.niter}")
    if not np.isfinite(params.cellprob_threshold) or abs(params.cellprob_threshold) > 50:
        value = params.cellprob_threshold
        raise InvalidArgument.field("cellprob_threshold", f"must be a logit in [-50, 50], got {value}")
    if not np.isfinite(params.flow_threshold) or params.flow_threshold < 0:
        value = params.flow_threshold
        raise InvalidArgument.field("flow_threshold", f"must be >= 0 (0 turns the check off), got {value}")
    if params.min_size < 0:
        raise InvalidArgument.field("min_size", f"must be >= 0, got {params.min_size}")


def network_shape(shape: tuple[int, int], contract: SegmentationContract, diameter: float) -> tuple[int, int]:
    """The (h, w) of an image of ``shape`` (H, W) rescaled so that cells of ``diameter`` become the
    model's own diameter (0: not rescaled), as ``prepare`` does, before padding."""
    return scaled_shape(shape, contract.diameter / diameter) if diameter > 0 else shape


def padding(shape: tuple[int, int], pad: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zeros around an image of ``shape`` (h, w): ``pad`` on each side
    plus what makes each side a multiple of 2 * ``pad``, split evenly with the odd pixel after
    (Cellpose's ``transforms.get_pad_yx(h, w, div=2 * pad, extra=1)``); no padding for 0."""
    if pad <= 0:
        return (0, 0, 0, 0)
    div = 2 * pad
    ry, rx = -shape[0] % div, -shape[1] % div
    return (pad + ry // 2, pad + ry - ry // 2, pad + rx // 2, pad + rx - rx // 2)


def padded_shape(shape: tuple[int, int], contract: SegmentationContract, diameter: float) -> tuple[int, int]:
    """The (h, w) the network's tiles are cut from for an image of ``shape``: rescaled and padded."""
    h, w = network_shape(shape, contract, diameter)
    top, bottom, left, right = padding((h, w), contract.pad)
    return h + top + bottom, w + left + right


def check_network_size(
    shape: tuple[int, int], contract: SegmentationContract, diameter: float, max_network_pixels: int, field: str
) -> None:
    """The network's work for an image of ``shape`` (H, W): its tiles after rescaling for
    ``diameter``, padding (``pad``) and tiling, at most ``max_network_pixels`` pixels (setting
    ``segmentation.max_network_pixels``). Checked before anything is rescaled or tiled."""
    scaled = network_shape(shape, contract, diameter)
    padded = padded_shape(shape, contract, diameter)
    layout = tiling.grid(padded, contract.tile, contract.overlap, contract.size_multiple)
    tiles, pixels = len(layout.corners), layout.network_pixels
    if pixels <= max_network_pixels:
        return
    image = f"the {shape[0]}x{shape[1]} image"
    if scaled != shape:
        image += (
            f" rescaled for diameter {diameter:g} (the model's cell diameter is {contract.diameter:g}) "
            f"to {scaled[0]}x{scaled[1]}"
        )
    raise InvalidArgument.field(
        f"{field}.shape",
        f"{image} runs as {tiles} tiles of {layout.tile[0]}x{layout.tile[1]} = {pixels} network pixels, which exceeds "
        f"segmentation.max_network_pixels = {max_network_pixels}",
    )


def prepare(channels_first: Array, contract: SegmentationContract, diameter: float) -> Prepared:
    """channels_first: float32 [C, H, W] (channels already selected) -> ``Prepared``."""
    shape = (int(channels_first.shape[1]), int(channels_first.shape[2]))
    normalised = percentile_normalize(channels_first, *contract.percentiles)
    if diameter > 0:
        normalised = resize(normalised, network_shape(shape, contract, diameter))
    crop = padding((int(normalised.shape[1]), int(normalised.shape[2])), contract.pad)
    if any(crop):
        normalised = np.pad(normalised, ((0, 0), crop[:2], crop[2:]))
    return Prepared(normalised, shape, channels_first.mean(axis=0), diameter or contract.diameter, crop)


def grid(prepared: Prepared, contract: SegmentationContract) -> tiling.TileGrid:
    """The tiles of ``prepared.network_input`` for the model of ``contract``."""
    shape = (int(prepared.network_input.shape[1]), int(prepared.network_input.shape[2]))
    return tiling.grid(shape, contract.tile, contract.overlap, contract.size_multiple)


def finish(
    prepared: Prepared, stitched: Array, params: MaskParams, follow: FollowFn | None = None, block: int = BLOCK
) -> Segmented:
    """stitched: float32 [3, h, w] network output on ``prepared.network_input`` (the padding is
    cropped off here); ``follow``: see ``dynamics.compute_masks``. Masks are reconstructed
    ``block`` x ``block`` at a time (``blocks.compute_masks_blocked``), so large images need no
    whole-image working arrays."""
    top, bottom, left, right = prepared.crop
    if any(prepared.crop):
        stitched = stitched[:, top : stitched.shape[1] - bottom, left : stitched.shape[2] - right]
    full = resize(stitched, prepared.shape) if stitched.shape[1:] != prepared.shape else stitched
    flows = np.ascontiguousarray(full[:2])
    cellprob = np.ascontiguousarray(full[2])
    masks = compute_masks_blocked(flows, cellprob, params, follow, block, halo_for(prepared.cell_diameter))
    return Segmented(masks, flows, cellprob, cell_stats(masks, prepared.intensity))


def segment_sync(
    channels_first: Array,
    contract: SegmentationContract,
    forward: Callable[[Array], Array],
    diameter: float = 0.0,
    params: MaskParams | None = None,
    batch: int = 8,
    block: int = BLOCK,
) -> Segmented:
    """The whole path with a synchronous ``forward`` ([B, C, t, t] -> [B, 3, t, t])."""
    params = params or MaskParams()
    prepared = prepare(channels_first, contract, diameter)
    stitched = tiling.run_tiled(
        prepared.network_input, contract.tile, contract.overlap, batch, forward, contract.size_multiple
    )
    return finish(prepared, stitched, params, block=block)

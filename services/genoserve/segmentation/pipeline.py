"""One image through the family: prepare (select channels, normalise, rescale, tile), then
finish (stitched network output -> flows and probability at full size -> masks -> stats).

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
    """A normalised (and rescaled) image float32 [C, h, w] and how to get back to [H, W]."""

    network_input: Array
    shape: tuple[int, int]
    intensity: Array  # float32 [H, W]: mean of the selected raw channels, for per-cell stats
    cell_diameter: float  # expected cell size at full resolution (pixels): sets the blocks' halo


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
    """The (h, w) the network sees for an image of ``shape`` (H, W): rescaled so that cells of
    ``diameter`` become the model's own diameter (0: not rescaled), as ``prepare`` does."""
    return scaled_shape(shape, contract.diameter / diameter) if diameter > 0 else shape


def check_network_size(
    shape: tuple[int, int], contract: SegmentationContract, diameter: float, max_network_pixels: int, field: str
) -> None:
    """The network's work for an image of ``shape`` (H, W): its tiles after rescaling for
    ``diameter`` and padding to whole tiles, at most ``max_network_pixels`` pixels (setting
    ``segmentation.max_network_pixels``). Checked before anything is rescaled or tiled."""
    scaled = network_shape(shape, contract, diameter)
    tiles = tiling.tile_count(scaled, contract.tile, contract.overlap)
    pixels = tiles * contract.tile * contract.tile
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
        f"{image} runs as {tiles} tiles of {contract.tile}x{contract.tile} = {pixels} network pixels, which exceeds "
        f"segmentation.max_network_pixels = {max_network_pixels}",
    )


def prepare(channels_first: Array, contract: SegmentationContract, diameter: float) -> Prepared:
    """channels_first: float32 [C, H, W] (channels already selected) -> ``Prepared``."""
    shape = (int(channels_first.shape[1]), int(channels_first.shape[2]))
    normalised = percentile_normalize(channels_first, *contract.percentiles)
    if diameter > 0:
        normalised = resize(normalised, network_shape(shape, contract, diameter))
    return Prepared(normalised, shape, channels_first.mean(axis=0), diameter or contract.diameter)


def finish(
    prepared: Prepared, stitched: Array, params: MaskParams, follow: FollowFn | None = None, block: int = BLOCK
) -> Segmented:
    """stitched: float32 [3, h, w] network output on ``prepared.network_input``; ``follow``:
    see ``dynamics.compute_masks``. Masks are reconstructed ``block`` x ``block`` at a time
    (``blocks.compute_masks_blocked``), so large images need no whole-image working arrays."""
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
    stitched = tiling.run_tiled(prepared.network_input, contract.tile, contract.overlap, batch, forward)
    return finish(prepared, stitched, params, block=block)

"""Per-channel percentile normalisation and resizing by a cell-diameter ratio."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

Array = np.ndarray[Any, Any]


def percentile_normalize(image: Array, lower: float = 1.0, upper: float = 99.0) -> Array:
    """Map each channel's ``lower``/``upper`` percentiles to 0/1 (Cellpose's ``normalize99``).

    image: [C, H, W] any real dtype -> float32 [C, H, W]. A flat channel (both percentiles equal)
    becomes all zeros rather than dividing by zero.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float32, copy=False)
        lo, hi = np.percentile(channel, [lower, upper])
        if hi - lo > 1e-12:
            out[c] = (channel - lo) / (hi - lo)
        else:
            out[c] = 0.0
    return out


def resize(array: Array, shape: tuple[int, int], order: int = 1) -> Array:
    """Resize the last two axes of [..., H, W] to ``shape`` (bilinear for ``order=1``); float32."""
    if tuple(array.shape[-2:]) == tuple(shape):
        return array.astype(np.float32, copy=False)
    factors = (1.0,) * (array.ndim - 2) + (shape[0] / array.shape[-2], shape[1] / array.shape[-1])
    out = ndimage.zoom(array.astype(np.float32, copy=False), factors, order=order, mode="nearest", grid_mode=True)
    return np.asarray(out[..., : shape[0], : shape[1]], dtype=np.float32)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The (H, W) of an image of ``shape`` resized by ``scale``, truncated as Cellpose sizes it
    (``int(Ly * rsz)`` in ``core.run_net`` and ``transforms.resize_image``), at least 1 pixel each."""
    return max(1, int(shape[0] * scale)), max(1, int(shape[1] * scale))

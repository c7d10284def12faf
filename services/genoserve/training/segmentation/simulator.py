"""Synthetic fluorescence nuclei images with exact instance masks.

Each image: a random number of cells (sparse to crowded), each an ellipse or an irregular blob
(radius modulated by a few random harmonics) of random size and orientation, placed so that
neighbours may touch and overlap a little (later cells occlude earlier ones; the mask is what is
visible); a fraction of cells is placed right against an earlier one (touching pairs and
clusters). Intensity: a per-cell brightness (some cells dim), faint cell bodies around some
nuclei (signal outside the masks), a dome profile, multiplicative texture; then optical blur, a
background level with a linear gradient, shot and read noise, sometimes saturation (the
brightest nuclei clipped flat), a random gain and integer camera levels. The masks are exact by
construction. Deterministic from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class SimConfig:
    size: tuple[int, int] = (128, 128)
    #: cell diameter range in pixels (the real nuclei image has ~5-13 px)
    diameter: tuple[float, float] = (5.0, 22.0)
    #: fraction of dim cells (4-25 % of the brightest), like the faint nuclei of real images
    dim_fraction: float = 0.15
    #: fraction of cells with a faint cell body around the nucleus (not part of the mask)
    cytoplasm_fraction: float = 0.5
    #: fraction of the image area covered by cells (before occlusion)
    coverage: tuple[float, float] = (0.05, 0.45)
    max_overlap: float = 0.25
    #: fraction of cells placed against an existing neighbour (touching pairs and clusters, as
    #: in the real image, where most merges happen)
    touching_fraction: float = 0.4
    #: fraction of images clipped at a saturation level (bright nuclei at the camera's maximum)
    saturated_fraction: float = 0.3
    #: fraction of cells that are tiny faint nuclei (small, out-of-focus or fragmented nuclei:
    #: a few pixels across, a sharp peak a tenth as bright as the typical nucleus), whatever
    #: the image's typical size
    tiny_fraction: float = 0.1
    tiny_diameter: tuple[float, float] = (4.5, 6.5)
    tiny_brightness: tuple[float, float] = (0.04, 0.25)
    #: largest elongation of the faint cell bodies (1: round; spread, fibroblast-like bodies
    #: stretch several times the nucleus' size)
    cytoplasm_elongation: float = 4.0


def _cell_shape(rng: np.random.Generator, radius: float) -> tuple[Array, int]:
    """One cell's filled shape: bool [s, s] and its half-size."""
    half = int(np.ceil(radius * 1.6)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    elong = rng.uniform(1.0, 1.8)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * xx + s * yy) / np.sqrt(elong)
    v = (-s * xx + c * yy) * np.sqrt(elong)
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    modulation = np.ones_like(theta)
    if rng.random() < 0.6:  # irregular blob
        for k in (2, 3, 4, 5):
            modulation += rng.normal(0, 0.06 if k > 2 else 0.1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rho <= radius * modulation, half


def _cytoplasm(rng: np.random.Generator, masks: Array, fraction: float, elongation: float = 1.0) -> Array:
    """Faint, smooth cell bodies around some nuclei, outside every mask: float64 [H, W]."""
    h, w = masks.shape
    bodies = np.zeros((h, w), dtype=np.float64)
    n = int(masks.max())
    if n == 0 or fraction <= 0:
        return bodies
    ys, xs = np.nonzero(masks)
    lab = masks[ys, xs]
    count = np.bincount(lab, minlength=n + 1)
    cy = np.bincount(lab, weights=ys, minlength=n + 1) / np.maximum(count, 1)
    cx = np.bincount(lab, weights=xs, minlength=n + 1) / np.maximum(count, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    for label in np.nonzero(count)[0]:
        if label == 0 or rng.random() > fraction:
            continue
        radius = np.sqrt(count[label] / np.pi) * rng.uniform(1.5, 3.0)
        oy, ox = rng.normal(0, radius / 3, 2)
        dy, dx = yy - cy[label] - oy, xx - cx[label] - ox
        if elongation > 1.0:
            angle, stretch = rng.uniform(0, np.pi), rng.uniform(1.0, elongation)
            c, s = np.cos(angle), np.sin(angle)
            dy, dx = (c * dy - s * dx) * np.sqrt(stretch), (s * dy + c * dx) / np.sqrt(stretch)
        d2 = (dy**2 + dx**2) / radius**2
        bodies += rng.uniform(0.02, 0.12) * np.exp(-d2 * rng.uniform(1.0, 3.0))
    bodies = ndimage.gaussian_filter(bodies * (1 + 0.5 * rng.normal(0, 1, (h, w))), 1.0)
    return np.where(masks > 0, 0.0, np.clip(bodies, 0, None))


def simulate(rng: np.random.Generator, config: SimConfig = SimConfig()) -> tuple[Array, Array]:
    """One image float32 [H, W] (arbitrary units, like a camera) and its masks int32 [H, W]."""
    h, w = config.size
    masks = np.zeros((h, w), dtype=np.int32)
    signal = np.zeros((h, w), dtype=np.float64)
    d_lo, d_hi = config.diameter
    mean_d = np.exp(rng.uniform(np.log(d_lo), np.log(d_hi)))  # one typical size per image
    target = rng.uniform(*config.coverage) * h * w
    covered = 0.0
    label = 0
    attempts = 0
    placed: list[tuple[int, int, float]] = []  # (centre y, centre x, radius) of each cell
    while covered < target and attempts < 400:
        attempts += 1
        tiny = config.tiny_fraction > 0 and rng.random() < config.tiny_fraction
        if tiny:
            radius = rng.uniform(*config.tiny_diameter) / 2
        else:
            radius = float(np.clip(mean_d * rng.lognormal(0, 0.2), d_lo, d_hi * 1.2)) / 2
        shape, half = _cell_shape(rng, radius)
        if label and rng.random() < config.touching_fraction:
            # Against a random earlier cell: centre at about the sum of the two radii.
            ny, nx, nr = placed[int(rng.integers(len(placed)))]
            angle = rng.uniform(0, 2 * np.pi)
            dist = (nr + radius) * rng.uniform(0.8, 1.05)
            cy, cx = round(ny + dist * np.sin(angle)), round(nx + dist * np.cos(angle))
        else:
            cy, cx = int(rng.integers(-half // 2, h + half // 2)), int(rng.integers(-half // 2, w + half // 2))
        y0, x0 = cy - half, cx - half
        ys = slice(max(y0, 0), min(y0 + 2 * half + 1, h))
        xs = slice(max(x0, 0), min(x0 + 2 * half + 1, w))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        piece = shape[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        if piece.sum() < 4:
            continue
        under = masks[ys, xs][piece]
        if (under > 0).mean() > config.max_overlap:
            continue
        # Do not let an occluded neighbour lose more than a third of itself or split in two.
        hit = np.unique(under[under > 0])
        ok = True
        for other in hit:
            region = masks == other
            remaining = region.copy()
            remaining[ys, xs] &= ~piece
            if remaining.sum() < 0.66 * region.sum() or ndimage.label(remaining)[1] != 1:
                ok = False
                break
        if not ok:
            continue
        label += 1
        masks[ys, xs][piece] = label
        yy, xx = np.nonzero(piece)
        dist = np.hypot(yy - (cy - ys.start), xx - (cx - xs.start)) / max(radius, 1.0)
        if tiny:
            brightness = rng.uniform(*config.tiny_brightness)
            dome = 1.0 - rng.uniform(0.5, 0.9) * np.clip(dist, 0, 1) ** 2
        else:
            brightness = rng.uniform(0.06, 0.25) if rng.random() < config.dim_fraction else rng.uniform(0.25, 1.0)
            dome = 1.0 - rng.uniform(0.0, 0.4) * np.clip(dist, 0, 1) ** 2
        region_signal = signal[ys, xs]
        region_signal[yy, xx] = brightness * dome
        signal[ys, xs] = region_signal
        covered += piece.sum()
        placed.append((cy, cx, radius))
    signal += _cytoplasm(rng, masks, config.cytoplasm_fraction, config.cytoplasm_elongation)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(0.7, 2.0))
    texture /= max(texture.std(), 1e-9)
    signal *= np.clip(1.0 + rng.uniform(0.0, 0.35) * texture, 0.2, None)
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.4, 1.6))
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    background = rng.uniform(0.0, 0.15) + rng.normal(0, 0.08) * yy + rng.normal(0, 0.08) * xx
    image = signal + np.clip(background, 0, None)
    photons = rng.uniform(30, 400)
    image = rng.poisson(np.clip(image, 0, None) * photons) / photons + rng.normal(0, rng.uniform(0.005, 0.04), (h, w))
    if rng.random() < config.saturated_fraction:  # camera saturation: the brightest nuclei go flat
        image = np.minimum(image, np.percentile(image, rng.uniform(97.0, 99.8)))
    gain = rng.uniform(50, 3000)
    return np.round(image * gain).astype(np.float32), masks


def touching_pixels(masks: Array) -> Array:
    """bool [H, W]: pixels of a mask with another mask in their 3x3 neighbourhood."""
    hi = ndimage.maximum_filter(masks, size=3)
    lo = ndimage.minimum_filter(np.where(masks > 0, masks, np.iinfo(masks.dtype).max), size=3)
    return np.asarray((masks > 0) & ((hi != masks) | (lo != masks)))


def dataset(seed: int, count: int, config: SimConfig = SimConfig()) -> list[tuple[Array, Array]]:
    rng = np.random.default_rng(seed)
    return [simulate(rng, config) for _ in range(count)]

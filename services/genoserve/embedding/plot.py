"""A picture of an embedding for a person to look at: a UMAP of ``obsm["X_scVI"]``, coloured by
an obs column. The latent is read in chunks; at most ``max_points`` cells (default 10,000, a
seeded random subsample of larger files) are laid out and drawn, so time and memory do not grow
with the file (10,000 cells: 28 s on 2 cores at load 6). The UMAP is genoserve's own numpy
implementation (``genoserve.embedding.umap``), not umap-learn, so the serving image needs no numba.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from genoserve.embedding.h5io import read_obs_column
from genoserve.embedding.umap import umap

Array = np.ndarray[Any, Any]

#: Cells laid out and drawn at most; larger files are subsampled (seeded).
MAX_POINTS = 10_000


def embedding_png(
    h5ad: Path, target: Path, key: str = "X_scVI", color_by: str = "", max_points: int = MAX_POINTS,
    chunk: int = 65_536, seed: int = 0, title: str = "",
) -> Path:  # fmt: skip
    """Write a PNG scatter of ``obsm[key]`` of ``h5ad`` (temp + rename); returns ``target``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(h5ad, "r") as handle:
        dataset = handle["obsm"][key]
        n = dataset.shape[0]
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
        latent = _rows(dataset, chosen, chunk)
    points = umap(latent, seed=seed) if len(chosen) >= 3 else np.zeros((len(chosen), 2), np.float32)
    labels = _labels(h5ad, color_by, chosen, n, chunk) if color_by else None
    figure, ax = plt.subplots(figsize=(7, 6), dpi=110)
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, linewidths=0, alpha=0.7)
    else:
        names = sorted(set(labels))
        colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
        values = np.array(labels)
        for i, name in enumerate(names):
            mask = values == name
            ax.scatter(points[mask, 0], points[mask, 1], s=3, linewidths=0, alpha=0.8,
                       color=colours(i % colours.N), label=name)  # fmt: skip
        ax.legend(title=color_by, markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)  # fmt: skip
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{h5ad.name}: {len(chosen)} of {n} cells, UMAP of {key}", fontsize=9)
    figure.tight_layout()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}.png")
    figure.savefig(tmp, format="png")
    plt.close(figure)
    os.replace(tmp, target)
    return target


def _rows(dataset: h5py.Dataset, chosen: Array, chunk: int) -> Array:
    out = np.empty((len(chosen), dataset.shape[1]), dtype=np.float64)
    for i in range(0, dataset.shape[0], chunk):
        lo, hi = np.searchsorted(chosen, [i, i + chunk])
        if hi > lo:
            out[lo:hi] = dataset[i : i + chunk][chosen[lo:hi] - i]
    return out


def _labels(h5ad: Path, column: str, chosen: Array, n: int, chunk: int) -> list[str]:
    out: list[str] = []
    for i in range(0, n, chunk):
        lo, hi = np.searchsorted(chosen, [i, i + chunk])
        if hi > lo:
            values = read_obs_column(h5ad, column, i, min(i + chunk, n))
            out.extend(values[j - i] for j in chosen[lo:hi])
    return out

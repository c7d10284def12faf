"""The PCA baseline every embedding model is compared with: library-size normalisation to 1e4,
log1p, centring, top principal components (scanpy's default preprocessing, in numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

TARGET_SUM = 1e4


def log_normalise(counts: Array) -> Array:
    """float64 [n_cells, n_genes]: log1p(counts / total * 1e4); empty cells stay 0."""
    totals = counts.sum(1, keepdims=True, dtype=np.float64)
    out: Array = np.log1p(counts / np.maximum(totals, 1.0) * TARGET_SUM)
    return out


@dataclass(frozen=True)
class Pca:
    """``mean`` float64 [n_genes], ``components`` float64 [n_components, n_genes]."""

    mean: Array
    components: Array

    @classmethod
    def fit(cls, counts: Array, n_components: int) -> Pca:
        x = log_normalise(counts)
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        components = vt[:n_components]
        # Deterministic signs: the largest loading of each component is positive.
        signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(1)])
        return cls(mean, components * signs[:, None])

    def transform(self, counts: Array) -> Array:
        """float32 [n_cells, n_components]."""
        return ((log_normalise(counts) - self.mean) @ self.components.T).astype(np.float32)


def project_2d(latent: Array) -> Array:
    """The latent's top-2 principal components, float32 [n_cells, 2] (for a picture)."""
    centred = latent.astype(np.float64) - latent.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out: Array = (centred @ vt[:2].T).astype(np.float32)
    return out

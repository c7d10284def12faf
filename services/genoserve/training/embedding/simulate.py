"""Simulated single-cell counts with cell types, library-size variation and batch effects.

Negative-binomial counts drawn as a gamma-Poisson mixture (Splatter's model, Zappia et al.
2017, simplified): per gene a base log-expression; per cell type a set of marker genes with
log fold changes; per batch a gene-wise log fold change (the batch effect) and a library-size
shift; per cell a log-normal library size; per gene an inverse dispersion theta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class SimConfig:
    n_cells: int = 6000
    n_genes: int = 2000
    n_types: int = 6
    n_batches: int = 3
    #: Fraction of genes that mark each cell type, and their log fold change (mean, sd).
    marker_fraction: float = 0.04
    marker_lfc: tuple[float, float] = (1.6, 0.4)
    #: Standard deviation of the gene-wise batch log fold change.
    batch_lfc_sd: float = 0.6
    #: Mean log library size, its sd between cells, and its shift sd between batches.
    log_library: float = 8.0
    log_library_sd: float = 0.35
    batch_library_sd: float = 0.3


@dataclass(frozen=True)
class SimData:
    """counts float32 [n_cells, n_genes]; cell_types, batches str [n_cells]; genes str [n_genes]."""

    counts: Array
    cell_types: Array
    batches: Array
    genes: list[str]
    batch_names: list[str]


def simulate(config: SimConfig, seed: int, cell_seed: int | None = None) -> SimData:
    """Genes, cell types and batch effects from ``seed``; the cells from ``cell_seed`` when given
    (fresh cells of the same biology, e.g. to re-check a trained model), else from ``seed`` too."""
    rng = np.random.default_rng(seed)
    g = config.n_genes
    base = rng.normal(0.0, 1.2, size=g)
    type_lfc = np.zeros((config.n_types, g))
    n_markers = max(1, int(config.marker_fraction * g))
    for t in range(config.n_types):
        markers = rng.choice(g, size=n_markers, replace=False)
        type_lfc[t, markers] = rng.normal(*config.marker_lfc, size=n_markers)
    batch_lfc = rng.normal(0.0, config.batch_lfc_sd, size=(config.n_batches, g))
    batch_library = rng.normal(0.0, config.batch_library_sd, size=config.n_batches)
    theta = rng.gamma(2.0, 2.0, size=g) + 0.5
    if cell_seed is not None:
        rng = np.random.default_rng([seed, cell_seed])

    batches = rng.integers(0, config.n_batches, size=config.n_cells)
    # Cell-type proportions differ between batches (as in real data).
    proportions = rng.dirichlet(np.full(config.n_types, 4.0), size=config.n_batches)
    types = np.array([rng.choice(config.n_types, p=proportions[b]) for b in batches])
    log_rate = base[None, :] + type_lfc[types] + batch_lfc[batches]
    share = np.exp(log_rate - log_rate.max(1, keepdims=True))
    share /= share.sum(1, keepdims=True)
    library = np.exp(rng.normal(config.log_library + batch_library[batches], config.log_library_sd))
    mean = share * library[:, None]
    rate = rng.gamma(theta[None, :], mean / theta[None, :])
    counts = rng.poisson(rate).astype(np.float32)
    batch_names = [f"batch{b}" for b in range(config.n_batches)]
    return SimData(
        counts=counts,
        cell_types=np.array([f"type{t}" for t in types]),
        batches=np.array([batch_names[b] for b in batches]),
        genes=[f"SIM{i:05d}" for i in range(g)],
        batch_names=batch_names,
    )

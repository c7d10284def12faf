"""The real PBMC counts shipped as test data, as a CSR matrix with gene names."""

from __future__ import annotations

import h5py
import scipy.sparse as sp

from tests.support.server import REPO

PBMC = REPO / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"


def pbmc_csr() -> tuple[sp.csr_matrix, list[str]]:
    """700 PBMCs x 765 genes (raw counts) and the gene names, read straight from the .h5ad."""
    with h5py.File(PBMC) as f:
        x = f["X"]
        matrix = sp.csr_matrix((x["data"][:], x["indices"][:], x["indptr"][:]), shape=tuple(x.attrs["shape"]))
        genes = [g.decode() if isinstance(g, bytes) else g for g in f["var/index"][:]]
    return matrix, genes

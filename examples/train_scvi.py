"""Train a small scvi-tools SCVI model and save it as ``SCVI.save`` does: the input of
``genoserve models import scvi`` in the README's "Serve your own model".

Run from the repository root (about 10 s on a CPU)::

    python examples/train_scvi.py                     # writes out/my-scvi/ (model.pt)

The data are the 700 real PBMCs x 765 genes of ``tests/data/embedding`` (raw counts in
``layers["counts"]``). The cell-cycle phase in ``obs["phase"]`` (G1, S, G2M) stands in for a
batch covariate, given to the encoder too (``encode_covariates``), so that the imported model
takes each cell's batch: ``genoserve predict embedding`` reads it from the same obs column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import scvi

PBMC = Path("tests/data/embedding/pbmc68k_reduced_counts_700x765.h5ad")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("out/my-scvi"), help="SCVI.save folder")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    scvi.settings.seed = 0
    adata = ad.read_h5ad(PBMC)
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="phase")
    model = scvi.model.SCVI(adata, n_latent=10, encode_covariates=True)
    model.train(max_epochs=args.epochs, accelerator="cpu", batch_size=128, enable_progress_bar=False)
    model.save(str(args.output), overwrite=True)
    print(f"saved {args.output}: SCVI on {adata.n_obs} cells x {adata.n_vars} genes, batch from obs['phase']")


if __name__ == "__main__":
    main()

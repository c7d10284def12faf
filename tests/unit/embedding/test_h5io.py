"""Chunked .h5ad / 10x .h5 reading and chunked .h5ad writing, on the real test files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from genoserve.core.errors import InvalidArgument
from genoserve.embedding.counts import CsrCounts, aligned_dense
from genoserve.embedding.genes import align
from genoserve.embedding.h5io import EmbeddingWriter, open_counts, read_obs_column
from genoserve.embedding.plot import embedding_png

DATA = Path(__file__).resolve().parents[2] / "data" / "embedding"
PBMC = DATA / "pbmc68k_reduced_counts_700x765.h5ad"
TENX = DATA / "scanpy_tests_10x_v3_filtered_feature_bc_matrix_1107x507.h5"


def dense_of(counts: object, n_genes: int) -> np.ndarray:
    if isinstance(counts, CsrCounts):
        return sp.csr_matrix((counts.data, counts.indices, counts.indptr), shape=(counts.n_cells, n_genes)).toarray()
    return np.asarray(counts)


def test_h5ad_chunks_equal_anndata() -> None:
    adata = ad.read_h5ad(PBMC)
    with open_counts(PBMC) as source:
        assert source.format == "h5ad"
        assert source.n_cells == 700
        assert source.genes == list(adata.var_names)
        assert source.cell_ids(10, 13) == list(adata.obs_names[10:13])
        parts = [dense_of(source.read(i, min(i + 128, 700)), 765) for i in range(0, 700, 128)]
    np.testing.assert_array_equal(np.concatenate(parts), adata.X.toarray())


def test_h5ad_layer_and_dense_x(tmp_path: Path) -> None:
    with open_counts(PBMC, layer="counts") as source:
        assert source.where == "layers/counts"
    with pytest.raises(InvalidArgument, match=r"no layer 'raw'; its layers: \['counts'\]"):
        open_counts(PBMC, layer="raw")
    dense = tmp_path / "dense.h5ad"
    small = ad.read_h5ad(PBMC)[:50].copy()
    small.X = small.X.toarray()
    small.write_h5ad(dense)
    with open_counts(dense) as source:
        np.testing.assert_array_equal(source.read(5, 9), small.X[5:9])


def test_csc_is_refused_with_the_fix(tmp_path: Path) -> None:
    adata = ad.read_h5ad(PBMC)[:20].copy()
    adata.X = sp.csc_matrix(adata.X)
    path = tmp_path / "csc.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(InvalidArgument, match=r"CSC.*tocsr"):
        open_counts(path)


def test_not_hdf5_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.h5ad"
    path.write_text("not hdf5")
    with pytest.raises(InvalidArgument, match="not an HDF5 file"):
        open_counts(path)


def test_10x_h5_matches_its_matrix() -> None:
    with h5py.File(TENX) as f:
        m = f["matrix"]
        expected = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:])).T
        names = [x.decode() for x in m["features/name"][:]]
    with open_counts(TENX) as source:
        assert source.format == "10x"
        assert source.n_cells == 1107
        assert source.genes == names
        assert source.cell_ids(0, 1) == ["AAACCCAAGGAGAGTA-1"]
        got = np.concatenate([dense_of(source.read(i, min(i + 400, 1107)), 507) for i in range(0, 1107, 400)])
    np.testing.assert_array_equal(got, expected.toarray())


def test_writer_adds_embedding_and_provenance_to_an_h5ad(tmp_path: Path) -> None:
    target = tmp_path / "out.h5ad"
    latent = np.random.default_rng(0).normal(size=(700, 10)).astype(np.float32)
    with open_counts(PBMC) as source:
        writer = EmbeddingWriter(source, target, 10)
        for i in range(0, 700, 300):
            writer.write(latent[i : i + 300])
        assert not target.exists()  # appears only when finished
        writer.finish({"model": "m", "version": "1", "gene_overlap": 1.0})
    out = ad.read_h5ad(target)
    np.testing.assert_array_equal(out.obsm["X_scVI"], latent)
    assert out.uns["genoserve"]["model"] == "m"
    assert out.uns["genoserve"]["gene_overlap"] == 1.0
    original = ad.read_h5ad(PBMC)
    assert list(out.obs["bulk_labels"]) == list(original.obs["bulk_labels"])
    assert (out.X != original.X).nnz == 0
    assert "counts" in out.layers


def test_writer_adds_posterior_variances_on_request(tmp_path: Path) -> None:
    target = tmp_path / "var.h5ad"
    rng = np.random.default_rng(1)
    mean, var = rng.normal(size=(700, 10)).astype(np.float32), rng.random((700, 10)).astype(np.float32)
    with open_counts(PBMC) as source:
        writer = EmbeddingWriter(source, target, 10, variances_key="X_scVI_var")
        with pytest.raises(ValueError, match="variances"):
            writer.write(mean[:10])
        for i in range(0, 700, 256):
            writer.write(mean[i : i + 256], var[i : i + 256])
        writer.finish({})
    out = ad.read_h5ad(target)
    np.testing.assert_array_equal(out.obsm["X_scVI"], mean)
    np.testing.assert_array_equal(out.obsm["X_scVI_var"], var)


def test_writer_converts_10x_to_h5ad(tmp_path: Path) -> None:
    target = tmp_path / "tenx.h5ad"
    with open_counts(TENX) as source:
        writer = EmbeddingWriter(source, target, 4, chunk=100)
        writer.write(np.ones((1107, 4), np.float32))
        writer.finish({"model": "m"})
    out = ad.read_h5ad(target)
    assert out.shape == (1107, 507)
    assert out.obs_names[0] == "AAACCCAAGGAGAGTA-1"
    assert list(out.var.columns) == ["gene_ids", "feature_types"]
    with open_counts(TENX) as source:
        np.testing.assert_array_equal(out.X[:50].toarray(), dense_of(source.read(0, 50), 507))
    assert out.obsm["X_scVI"].shape == (1107, 4)


def test_writer_refuses_a_short_embedding(tmp_path: Path) -> None:
    with open_counts(PBMC) as source:
        writer = EmbeddingWriter(source, tmp_path / "o.h5ad", 2)
        writer.write(np.zeros((10, 2), np.float32))
        with pytest.raises(ValueError, match="only 10 of 700"):
            writer.finish({})
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_reading_a_large_file_uses_memory_of_one_chunk(tmp_path: Path) -> None:
    """A 48 MB sparse matrix read in 1,000-cell chunks never holds more than a few chunks."""
    n_cells, n_genes, per_cell = 30_000, 2_000, 200
    path = tmp_path / "large.h5ad"
    rng = np.random.default_rng(0)
    indices = np.sort(rng.integers(0, n_genes, size=(n_cells, per_cell)), axis=1).ravel().astype(np.int32)
    matrix = sp.csr_matrix(
        (np.ones(indices.size, np.float32), indices, np.arange(0, indices.size + 1, per_cell)), (n_cells, n_genes)
    )
    ad.AnnData(matrix).write_h5ad(path)
    alignment = align([str(i) for i in range(n_genes)], [str(i) for i in range(n_genes)])
    total = 0.0
    tracemalloc.start()
    with open_counts(path) as source:
        for i in range(0, n_cells, 1000):
            total += float(aligned_dense(source.read(i, i + 1000), alignment).sum())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    file_matrix = matrix.data.nbytes + matrix.indices.nbytes
    assert total == matrix.sum()
    assert peak < 3 * 1000 * n_genes * 4 + 4_000_000 < file_matrix  # a few dense chunks, not the file
    assert file_matrix > 40_000_000


def test_obs_column_and_png(tmp_path: Path) -> None:
    assert read_obs_column(PBMC, "bulk_labels", 0, 2) == ["CD14+ Monocyte", "Dendritic"]
    with pytest.raises(InvalidArgument, match="no column 'nope'"):
        read_obs_column(PBMC, "nope", 0, 2)
    target = tmp_path / "emb.h5ad"
    with open_counts(PBMC) as source:
        writer = EmbeddingWriter(source, target, 3)
        writer.write(np.random.default_rng(0).normal(size=(700, 3)).astype(np.float32))
        writer.finish({})
    png = embedding_png(target, tmp_path / "emb.png", color_by="bulk_labels", max_points=500, chunk=256)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

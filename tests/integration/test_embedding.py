"""CellEmbedding end to end on a real server (and a real worker for the bulk job), with the
committed scVI models, real PBMC counts and a real 10x .h5."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import grpc
import numpy as np
import onnxruntime as ort
import pytest
import scipy.sparse as sp
import yaml

from genoserve.api.codecs.tensor import to_numpy
from genoserve.client import AsyncClient, Client
from genoserve.client.client import embed_request
from genoserve.core.errors import InvalidArgument, NotFound
from genoserve.v1 import embedding_pb2, jobs_pb2
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

DATA = REPO / "tests" / "data" / "embedding"
PBMC = DATA / "pbmc68k_reduced_counts_700x765.h5ad"
TENX = DATA / "scanpy_tests_10x_v3_filtered_feature_bc_matrix_1107x507.h5"
MODELS = REPO / "models"


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("embedding")
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(MODELS)},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root), str(DATA)], "output_roots": [str(root)],
                 "shard_lease_s": 5.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(root / "data" / "metrics"), "batch_size": 128},
    }))  # fmt: skip
    worker = WorkerProcess(config, root / "worker.log", "--queues", "embedding").start()
    server = ServerProcess("--config", str(config), model_dir=MODELS, log_path=root / "server.log").start()
    yield Rig(root, server, worker)
    server.terminate()
    worker.stop()


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    return ad.read_h5ad(PBMC)


def onnx_latent(model: str, counts: np.ndarray, batch: np.ndarray | None = None, output: str = "latent_mean"
                ) -> np.ndarray:  # fmt: skip
    """The committed encoder run directly in ONNX Runtime on counts already in the model's gene order."""
    session = ort.InferenceSession(str(MODELS / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"counts": counts.astype(np.float32)}
    if batch is not None:
        feeds["batch"] = batch.astype(np.float32)
    return session.run([output], feeds)[0]


def model_genes(model: str) -> list[str]:
    spec = yaml.safe_load((MODELS / model / "model.yaml").read_text())
    return list(spec["inputs"][0]["labels"])


def latent_of(response: embedding_pb2.EmbedResponse) -> np.ndarray:
    return to_numpy(response.latent, "latent")


def test_health_lists_the_service(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        assert client.health("genoserve.v1.CellEmbedding") == "SERVING"
        assert {m.name for m in client.list_models("embedding")} >= {"scvi-pbmc", "scvi-sim-batch"}


def test_embed_csr_and_dense_match_onnx_runtime(rig: Rig, pbmc: ad.AnnData) -> None:
    genes = list(pbmc.var_names)
    assert genes == model_genes("scvi-pbmc")
    expected = onnx_latent("scvi-pbmc", pbmc.X[:100].toarray())
    with Client(rig.server.address) as client:
        sparse = client.embed("scvi-pbmc", genes, pbmc.X[:100], cell_ids=list(pbmc.obs_names[:100]),
                              return_variances=True)  # fmt: skip
        dense = client.embed("scvi-pbmc", genes, pbmc.X[:100].toarray().astype(np.int32))
    np.testing.assert_allclose(latent_of(sparse), expected, atol=1e-5)
    np.testing.assert_allclose(latent_of(dense), expected, atol=1e-5)
    assert list(sparse.cell_ids) == list(pbmc.obs_names[:100])
    assert list(dense.cell_ids)[:2] == ["cell0", "cell1"]
    variances = to_numpy(sparse.variances, "variances")
    assert variances.shape == (100, 10)
    assert (variances > 0).all()
    assert not dense.HasField("variances")
    assert sparse.gene_overlap.fraction == 1.0
    assert sparse.gene_overlap.matched == 765


def test_generic_infer_on_raw_counts_matches_onnx_runtime(rig: Rig) -> None:
    """The server's session runs the encoder with its log1p folded out (runtime.graph_rewrites): a
    caller of the generic Infer passes raw counts, as the model.yaml says, and must get the same
    latent as the committed graph, not log1p taken twice or never."""
    rng = np.random.default_rng(3)
    counts = rng.negative_binomial(2, 0.3, size=(7, 2000)).astype(np.float32)
    one_hot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 7)]
    with Client(rig.server.address) as client:
        outputs = client.infer("scvi-sim-batch", {"counts": counts, "batch": one_hot})
    np.testing.assert_allclose(outputs["latent_mean"], onnx_latent("scvi-sim-batch", counts, one_hot), atol=1e-5)
    np.testing.assert_allclose(outputs["latent_var"], onnx_latent("scvi-sim-batch", counts, one_hot, "latent_var"),
                               rtol=1e-5)  # fmt: skip


def test_shuffled_gene_order_gives_the_same_embedding(rig: Rig, pbmc: ad.AnnData) -> None:
    order = np.random.default_rng(0).permutation(pbmc.n_vars)
    genes = list(pbmc.var_names[order])
    with Client(rig.server.address) as client:
        straight = latent_of(client.embed("scvi-pbmc", list(pbmc.var_names), pbmc.X[:50]))
        shuffled = latent_of(client.embed("scvi-pbmc", genes, sp.csr_matrix(pbmc.X[:50][:, order])))
        shuffled_dense = latent_of(client.embed("scvi-pbmc", genes, pbmc.X[:50][:, order].toarray()))
    np.testing.assert_allclose(shuffled, straight, atol=1e-6)
    np.testing.assert_allclose(shuffled_dense, straight, atol=1e-6)


def test_missing_genes_zero_filled_and_extra_genes_dropped(rig: Rig, pbmc: ad.AnnData) -> None:
    counts = pbmc.X[:40].toarray()
    keep = np.arange(pbmc.n_vars) % 10 != 0  # 10% of the model's genes missing
    extra = np.random.default_rng(1).poisson(3.0, size=(40, 5)).astype(np.float32)
    genes = [*pbmc.var_names[keep], "NOTAGENE1", "NOTAGENE2", "NOTAGENE3", "NOTAGENE4", "NOTAGENE5"]
    sent = np.concatenate([counts[:, keep], extra], axis=1)
    zero_filled = counts.copy()
    zero_filled[:, ~keep] = 0
    with Client(rig.server.address) as client:
        response = client.embed("scvi-pbmc", genes, sent)
    np.testing.assert_allclose(latent_of(response), onnx_latent("scvi-pbmc", zero_filled), atol=1e-5)
    overlap = response.gene_overlap
    assert (overlap.matched, overlap.extra, overlap.missing_count) == (int(keep.sum()), 5, int((~keep).sum()))
    assert overlap.fraction == pytest.approx(keep.mean(), abs=1e-6)
    assert list(overlap.missing_genes)[:2] == [pbmc.var_names[0], pbmc.var_names[10]]


def test_low_overlap_is_refused_stating_the_overlap(rig: Rig, pbmc: ad.AnnData) -> None:
    genes = list(pbmc.var_names[:500])
    with Client(rig.server.address) as client:
        with pytest.raises(InvalidArgument) as caught:
            client.embed("scvi-pbmc", genes, pbmc.X[:5, :500])
        assert "gene overlap 0.654" in caught.value.message
        assert caught.value.violations[0].field == "counts.gene_names"
        allowed = client.embed("scvi-pbmc", genes, pbmc.X[:5, :500], min_gene_overlap=0.6)
    assert allowed.gene_overlap.matched == 500


def bad(rig: Rig, request: bytes) -> grpc.RpcError:
    """The status of an Embed call with this serialized request (as ``embed_request`` builds it),
    sent over a plain channel, not the genoserve client."""
    with grpc.insecure_channel(rig.server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/genoserve.v1.CellEmbedding/Embed")(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value


@pytest.mark.parametrize(
    ("value", "rule"),
    [(-1.0, "counts must be >= 0"), (np.nan, "finite"), (np.inf, "finite"), (2.5, "whole numbers")],
)
def test_bad_count_values_are_invalid_argument(rig: Rig, pbmc: ad.AnnData, value: float, rule: str) -> None:
    dense = pbmc.X[:3].toarray()
    dense[1, 7] = value
    error = bad(rig, embed_request("scvi-pbmc", list(pbmc.var_names), dense))
    assert rule in error.details()
    assert "counts.dense" in error.details()
    assert "cell 1, gene column 7" in error.details()
    csr = sp.csr_matrix(pbmc.X[:3])
    csr.data[csr.indptr[2]] = value  # the first value of cell 2
    assert "cell 2" in bad(rig, embed_request("scvi-pbmc", list(pbmc.var_names), csr)).details()


def test_non_integer_counts_allowed_when_not_raw(rig: Rig, pbmc: ad.AnnData) -> None:
    dense = pbmc.X[:3].toarray() * 0.5
    with Client(rig.server.address) as client:
        response = client.embed("scvi-pbmc", list(pbmc.var_names), dense, not_raw_counts=True)
    np.testing.assert_allclose(latent_of(response), onnx_latent("scvi-pbmc", dense), atol=1e-5)


def test_csr_structure_and_shape_rules(rig: Rig, pbmc: ad.AnnData) -> None:
    genes = list(pbmc.var_names)
    csr = sp.csr_matrix(pbmc.X[:4])

    class Csr:
        def __init__(self, indptr: Any, indices: Any, data: Any) -> None:
            self.indptr, self.indices, self.data = np.asarray(indptr), np.asarray(indices), np.asarray(data)

    out_of_range = csr.indices.copy()
    out_of_range[0] = 765
    cases = [
        (Csr(csr.indptr[::-1].copy(), csr.indices, csr.data), "counts.csr.indptr"),
        (Csr(csr.indptr, out_of_range, csr.data), "column index 765 is outside [0, 765)"),
        (Csr(csr.indptr, csr.indices, csr.data[:-1]), "must match"),
    ]
    for matrix, rule in cases:
        assert rule in bad(rig, embed_request("scvi-pbmc", genes, matrix)).details()
    assert "4 columns but 765 gene names" in bad(rig, embed_request("scvi-pbmc", genes, np.zeros((2, 4)))).details()
    assert "3 ids for 4 cells" in bad(rig, embed_request("scvi-pbmc", genes, csr, cell_ids=["a", "b", "c"])).details()
    dup = [*genes[:-1], genes[0]]
    assert "appears at columns 0 and 764" in bad(rig, embed_request("scvi-pbmc", dup, csr)).details()
    assert "give the counts" in bad(rig, embedding_pb2.EmbedRequest(model="scvi-pbmc").SerializeToString()).details()
    assert "model: is required" in bad(rig, embed_request("", genes, csr)).details()
    assert "not an embedding model" in bad(rig, embed_request("platform-mlp", genes, csr)).details()
    assert "takes no batch covariate" in bad(rig, embed_request("scvi-pbmc", genes, csr, batch_labels=["x"])).details()
    with Client(rig.server.address) as client, pytest.raises(NotFound):
        client.embed("no-such-model", genes, csr)


def sim_cells(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    from genoserve.training.embedding.simulate import SimConfig, simulate

    data = simulate(SimConfig(n_cells=n), seed)
    return data.genes, data.counts, data.batches


def test_batch_covariate_labels(rig: Rig) -> None:
    genes, counts, batches = sim_cells(60, 11)
    assert genes == model_genes("scvi-sim-batch")
    categories = yaml.safe_load((MODELS / "scvi-sim-batch" / "model.yaml").read_text())["inputs"][1]["labels"]
    one_hot = (batches[:, None] == np.array(categories)[None, :]).astype(np.float32)
    with Client(rig.server.address) as client:
        response = client.embed("scvi-sim-batch", genes, counts, batch_labels=list(batches))
        single = client.embed("scvi-sim-batch", genes, counts[:3], batch_labels=[categories[1]])
    np.testing.assert_allclose(latent_of(response), onnx_latent("scvi-sim-batch", counts, one_hot), atol=1e-5)
    np.testing.assert_allclose(latent_of(single), onnx_latent("scvi-sim-batch", counts[:3], np.eye(3)[[1, 1, 1]]),
                               atol=1e-5)  # fmt: skip
    unknown = bad(rig, embed_request("scvi-sim-batch", genes, counts[:2], batch_labels=["batch0", "lab7"]))
    assert f"unknown batch label 'lab7'; known batches: {categories}" in unknown.details()
    assert "needs a batch label" in bad(rig, embed_request("scvi-sim-batch", genes, counts[:2])).details()


def test_embed_stream_chunks_equal_one_embed(rig: Rig, pbmc: ad.AnnData) -> None:
    genes = list(pbmc.var_names)
    requests = [embed_request("scvi-pbmc", genes, pbmc.X[:90])]
    requests += [embed_request("", [], pbmc.X[i : min(i + 90, 300)]) for i in range(90, 300, 90)]
    with Client(rig.server.address) as client:
        parts = list(client.embed_stream(requests))
        whole = client.embed("scvi-pbmc", genes, pbmc.X[:300])
    assert [len(p.cell_ids) for p in parts] == [90, 90, 90, 30]
    assert parts[1].cell_ids[0] == "cell90"
    np.testing.assert_allclose(np.concatenate([latent_of(p) for p in parts]), latent_of(whole), atol=1e-6)
    broken = pbmc.X[300:310].toarray()
    broken[0, 0] = -3
    with Client(rig.server.address) as client, pytest.raises(InvalidArgument, match=r"message 1: .*cell 90"):
        list(client.embed_stream([requests[0], embed_request("", [], broken)]))


def test_async_embed_stream_matches_the_blocking_one(rig: Rig, pbmc: ad.AnnData) -> None:
    genes = list(pbmc.var_names)
    chunks = [pbmc.X[i : min(i + 100, 250)] for i in range(0, 250, 100)]

    async def requests() -> AsyncIterator[embedding_pb2.EmbedRequest]:
        for i, chunk in enumerate(chunks):
            yield embed_request("scvi-pbmc" if i == 0 else "", genes if i == 0 else [], chunk)

    async def run() -> tuple[list[embedding_pb2.EmbedResponse], str]:
        async with AsyncClient(rig.server.address) as client:
            parts = [r async for r in client.embed_stream(requests())]
            broken = pbmc.X[:5].toarray()
            broken[2, 1] = np.nan
            try:
                _ = [r async for r in client.embed_stream([embed_request("scvi-pbmc", genes, broken)])]
            except InvalidArgument as exc:
                return parts, str(exc)
            return parts, ""

    parts, error = asyncio.run(run())
    assert [len(p.cell_ids) for p in parts] == [100, 100, 50]
    with Client(rig.server.address) as client:
        whole = client.embed("scvi-pbmc", genes, pbmc.X[:250])
    np.testing.assert_allclose(np.concatenate([latent_of(p) for p in parts]), latent_of(whole), atol=1e-6)
    assert "cell 2" in error


def test_cli_predict_embedding_writes_h5ad_and_png(rig: Rig, pbmc: ad.AnnData) -> None:
    out, png = rig.root / "cli.h5ad", rig.root / "cli.png"
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "predict", "embedding", "--h5ad", str(PBMC), "--output", str(out),
         "--layer", "counts", "--umap", str(png), "--color-by", "bulk_labels", "--chunk", "256", "--variances",
         "--address", rig.server.address],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "700 cells" in result.stdout
    written = ad.read_h5ad(out)
    np.testing.assert_allclose(written.obsm["X_scVI"], onnx_latent("scvi-pbmc", pbmc.X.toarray()), atol=1e-5)
    np.testing.assert_allclose(written.obsm["X_scVI_var"], onnx_latent("scvi-pbmc", pbmc.X.toarray(), None,
                                                                       "latent_var"), rtol=1e-5)  # fmt: skip
    assert written.uns["genoserve"]["variances_key"] == "X_scVI_var"
    assert written.uns["genoserve"]["model"] == "scvi-pbmc"
    assert written.uns["genoserve"]["gene_overlap"] == 1.0
    assert list(written.obs["bulk_labels"]) == list(pbmc.obs["bulk_labels"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_refuses_low_overlap_without_writing(rig: Rig) -> None:
    out = rig.root / "tenx-cli.h5ad"
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "predict", "embedding", "--h5ad", str(TENX), "--output", str(out),
         "--address", rig.server.address],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "gene overlap" in result.stderr
    assert not out.exists()


def test_cli_takes_the_batch_from_the_column_the_model_names(rig: Rig) -> None:
    """A batch-aware model without --batch-key: the batch comes from the obs column its model.yaml
    names (preprocessing.batch_key, as the embed_h5ad job reads it), the same as --batch-key
    naming it; a file without that column is a usage error that says so, before anything is
    written."""
    genes, counts, batches = sim_cells(300, 7)
    adata = ad.AnnData(sp.csr_matrix(counts), obs={"batch": batches, "lab": np.where(batches == "batch0", "x", "y")})
    adata.var_names = genes
    path = rig.root / "sim-cli.h5ad"
    adata.write_h5ad(path)
    categories = yaml.safe_load((MODELS / "scvi-sim-batch" / "model.yaml").read_text())["inputs"][1]["labels"]
    one_hot = (batches[:, None] == np.array(categories)[None]).astype(np.float32)
    expected = onnx_latent("scvi-sim-batch", counts, one_hot)

    def predict(source: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "genoserve.cli.main", "predict", "embedding", "--model",
                               "scvi-sim-batch", "--h5ad", str(source), "--output", str(out), *args, "--address",
                               rig.server.address], capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip

    result = predict(path, rig.root / "sim-cli.out.h5ad")
    assert result.returncode == 0, result.stderr
    assert "batch of each cell: obs['batch'] (the batch_key of scvi-sim-batch's model.yaml)" in result.stderr
    written = ad.read_h5ad(rig.root / "sim-cli.out.h5ad")
    np.testing.assert_allclose(written.obsm["X_scVI"], expected, atol=1e-5)
    assert written.uns["genoserve"]["batch_key"] == "batch"
    explicit = predict(path, rig.root / "sim-cli.explicit.h5ad", "--batch-key", "batch")
    assert explicit.returncode == 0, explicit.stderr
    np.testing.assert_array_equal(ad.read_h5ad(rig.root / "sim-cli.explicit.h5ad").obsm["X_scVI"],
                                  written.obsm["X_scVI"])  # fmt: skip
    adata.obs = adata.obs.rename(columns={"batch": "sample"})
    adata.write_h5ad(path)
    missing = predict(path, rig.root / "missing.h5ad")
    assert missing.returncode == 2
    assert f"scvi-sim-batch takes each cell's batch, one of {categories}: pass --batch-key" in missing.stderr
    assert "its model.yaml names obs['batch']" in missing.stderr
    assert not (rig.root / "missing.h5ad").exists()
    renamed = predict(path, rig.root / "renamed.h5ad", "--batch-key", "sample")
    assert renamed.returncode == 0, renamed.stderr
    np.testing.assert_array_equal(ad.read_h5ad(rig.root / "renamed.h5ad").obsm["X_scVI"], written.obsm["X_scVI"])


def test_embed_h5ad_job_h5ad_and_10x(rig: Rig, pbmc: ad.AnnData) -> None:
    out = rig.root / "job-out"
    with Client(rig.server.address) as client:
        job = client.submit_job("embedding.embed_h5ad", [str(PBMC)], str(out),
                                {"model": "scvi-pbmc", "shard_size": "250", "plot": "true",
                                 "color_by": "bulk_labels", "variances": "true"})  # fmt: skip
        tenx = client.submit_job("embedding.embed_h5ad", [str(TENX)], str(out),
                                 {"model": "scvi-pbmc", "min_gene_overlap": "0.001", "shard_size": "500"})  # fmt: skip
        done = wait_for_job(client, job.id, timeout=180)
        done_tenx = wait_for_job(client, tenx.id, timeout=180)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, (done.error, rig.worker.log())
    assert done_tenx.state == jobs_pb2.JOB_STATE_SUCCEEDED, (done_tenx.error, rig.worker.log())
    assert sorted(Path(p).name for p in done.outputs) == ["pbmc68k_reduced_counts_700x765.embedded.h5ad",
                                                          "pbmc68k_reduced_counts_700x765.embedding.png"]  # fmt: skip
    written = ad.read_h5ad(out / "pbmc68k_reduced_counts_700x765.embedded.h5ad")
    np.testing.assert_allclose(written.obsm["X_scVI"], onnx_latent("scvi-pbmc", pbmc.X.toarray()), atol=1e-5)
    np.testing.assert_allclose(written.obsm["X_scVI_var"], onnx_latent("scvi-pbmc", pbmc.X.toarray(), None,
                                                                       "latent_var"), rtol=1e-5)  # fmt: skip
    provenance = written.uns["genoserve"]
    assert (provenance["model"], provenance["version"], provenance["gene_overlap"]) == ("scvi-pbmc", "1", 1.0)
    assert (written.X != pbmc.X).nnz == 0
    tenx_out = ad.read_h5ad(out / "scanpy_tests_10x_v3_filtered_feature_bc_matrix_1107x507.embedded.h5ad")
    assert tenx_out.obsm["X_scVI"].shape == (1107, 10)
    assert "X_scVI_var" not in tenx_out.obsm  # only on request
    aligned = np.zeros((1107, 765), np.float32)
    position = {g: i for i, g in enumerate(pbmc.var_names)}
    for j, gene in enumerate(tenx_out.var_names):
        if gene in position:
            aligned[:, position[gene]] = tenx_out.X[:, j].toarray().ravel()
    np.testing.assert_allclose(tenx_out.obsm["X_scVI"], onnx_latent("scvi-pbmc", aligned), atol=1e-5)
    assert 0 < tenx_out.uns["genoserve"]["gene_overlap"] < 0.1


def test_embed_h5ad_job_rules(rig: Rig, pbmc: ad.AnnData) -> None:
    broken = pbmc[:300].copy()
    broken.X = broken.X.toarray()
    broken.X[260, 3] = 1.5
    path = rig.root / "fractional.h5ad"
    broken.write_h5ad(path)
    with Client(rig.server.address) as client:
        job = client.submit_job("embedding.embed_h5ad", [str(path)], str(rig.root / "bad-out"),
                                {"model": "scvi-pbmc", "shard_size": "100"})  # fmt: skip
        done = wait_for_job(client, job.id, timeout=120)
        with pytest.raises(InvalidArgument, match="gene overlap"):
            client.submit_job("embedding.embed_h5ad", [str(TENX)], str(rig.root / "o"), {"model": "scvi-pbmc"})
        with pytest.raises(InvalidArgument, match="no layer 'raw'"):
            client.submit_job("embedding.embed_h5ad", [str(PBMC)], str(rig.root / "o"),
                              {"model": "scvi-pbmc", "layer": "raw"})  # fmt: skip
        with pytest.raises(InvalidArgument, match=r"inputs\[0\]: gene names: gene overlap 0.016 \(12 of"):
            client.submit_job("embedding.embed_h5ad", [str(TENX)], str(rig.root / "o"), {"model": "scvi-pbmc"})
    assert done.state == jobs_pb2.JOB_STATE_FAILED
    assert str(path) in done.error
    assert "cell 260" in done.error
    assert "whole numbers" in done.error
    assert not (rig.root / "bad-out" / "fractional.embedded.h5ad").exists()


def test_embed_h5ad_job_with_batch_covariate(rig: Rig) -> None:
    genes, counts, batches = sim_cells(500, 5)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = genes
    adata.obs["batch"] = batches
    path = rig.root / "sim.h5ad"
    adata.write_h5ad(path)
    categories = yaml.safe_load((MODELS / "scvi-sim-batch" / "model.yaml").read_text())["inputs"][1]["labels"]
    one_hot = (batches[:, None] == np.array(categories)[None, :]).astype(np.float32)
    with Client(rig.server.address) as client:
        with pytest.raises(InvalidArgument, match="obs has no column 'nope'"):
            client.submit_job("embedding.embed_h5ad", [str(path)], str(rig.root / "o"),
                              {"model": "scvi-sim-batch", "batch_key": "nope"})  # fmt: skip
        with pytest.raises(InvalidArgument, match="unknown batch label 'lab9'"):
            client.submit_job("embedding.embed_h5ad", [str(path)], str(rig.root / "o"),
                              {"model": "scvi-sim-batch", "batch": "lab9"})  # fmt: skip
    with Client(rig.server.address) as client:
        job = client.submit_job("embedding.embed_h5ad", [str(path)], str(rig.root / "sim-out"),
                                {"model": "scvi-sim-batch", "shard_size": "200"})  # fmt: skip
        done = wait_for_job(client, job.id, timeout=180)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, (done.error, rig.worker.log())
    written = ad.read_h5ad(rig.root / "sim-out" / "sim.embedded.h5ad")
    np.testing.assert_allclose(written.obsm["X_scVI"], onnx_latent("scvi-sim-batch", counts, one_hot), atol=1e-5)

"""`genoserve models import scvi` end to end: a model trained here by scvi-tools itself on the real
PBMC counts (with a batch covariate in the encoder), imported by the CLI, served by a real server
and worker; the served latent equals scvi-tools' ``get_latent_representation``.

Needs the ``import`` extra (scvi-tools, torch), which ``make setup`` installs: without it these
tests fail.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
import scvi
import yaml

from genoserve.client import Client
from genoserve.v1 import jobs_pb2
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

PBMC = REPO / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"
BATCH_KEY = "phase"  # the cell-cycle phase the .h5ad carries (G1, S, G2M): a real 3-level covariate
NAME = "scvi-imported"
#: The acceptance figure: served latent vs scvi-tools', max abs.
TOLERANCE = 1e-4


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genoserve.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)  # fmt: skip


def train_scvi(folder: Path, **module: Any) -> tuple[Any, ad.AnnData]:
    """SCVI trained by scvi-tools on the PBMC counts (CPU, seed 0, a few epochs), saved to ``folder``."""
    scvi.settings.seed = 0
    adata = ad.read_h5ad(PBMC)
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=BATCH_KEY)
    model = scvi.model.SCVI(adata, **module)
    model.train(max_epochs=8, accelerator="cpu", batch_size=128, enable_progress_bar=False)
    model.save(str(folder), overwrite=True)
    return model, adata


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess
    mean: np.ndarray
    var: np.ndarray
    shuffled: Path
    import_stdout: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("import-scvi")
    # Two hidden layers, the batch injected into both (scvi-tools' deeply_inject_covariates).
    model, adata = train_scvi(root / "scvi-model", n_hidden=64, n_latent=10, n_layers=2, encode_covariates=True)
    mean, var = model.get_latent_representation(adata, return_dist=True)
    result = cli("models", "import", "scvi", str(root / "scvi-model"), "--name", NAME,
                 "--model-dir", str(root / "models"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The same cells, genes in another order, counts in X: what a user's file may look like.
    original = ad.read_h5ad(PBMC)
    order = np.random.default_rng(0).permutation(original.n_vars)
    shuffled = ad.AnnData(original.layers["counts"][:, order], obs=original.obs[[BATCH_KEY, "bulk_labels"]].copy())
    shuffled.var_names = original.var_names[order]
    shuffled.write_h5ad(root / "shuffled.h5ad")
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(root / "models")},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root)], "output_roots": [str(root)],
                 "shard_lease_s": 5.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(root / "data" / "metrics"), "batch_size": 128},
    }))  # fmt: skip
    worker = WorkerProcess(config, root / "worker.log", "--queues", "embedding").start()
    server = ServerProcess("--config", str(config), model_dir=root / "models", log_path=root / "server.log").start()
    yield Rig(root, server, worker, mean, var, root / "shuffled.h5ad", result.stdout)
    server.terminate()
    worker.stop()


def test_import_writes_the_contract_of_the_scvi_model(rig: Rig) -> None:
    spec = yaml.safe_load((rig.root / "models" / NAME / "model.yaml").read_text())
    pbmc = ad.read_h5ad(PBMC, backed="r")
    inputs = {port["name"]: port for port in spec["inputs"]}
    assert inputs["counts"]["labels"] == list(pbmc.var_names)  # the registry's genes, in training order
    assert inputs["batch"]["labels"] == ["G1", "G2M", "S"]  # scvi-tools' categories, in its order
    assert spec["preprocessing"] == {"architecture": "scvi", "likelihood": "zinb", "n_hidden": 64, "n_latent": 10,
                                     "encode_covariates": True, "batch_key": BATCH_KEY}  # fmt: skip
    assert "765 genes, 3 batches from obs['phase'], 10 latent dimensions" in rig.import_stdout


def test_predict_embedding_equals_scvi_latent_representation(rig: Rig) -> None:
    """The acceptance check: `genoserve predict embedding` on the shuffled file, batches from
    obs (no --batch-key: the column the imported model.yaml names), equals scvi-tools'
    get_latent_representation on the original within 1e-4."""
    out = rig.root / "embedded.h5ad"
    result = cli("predict", "embedding", "--model", NAME, "--h5ad", str(rig.shuffled), "--output", str(out),
                 "--variances", "--address", rig.server.address)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"batch of each cell: obs[{BATCH_KEY!r}]" in result.stderr
    written = ad.read_h5ad(out)
    mean_diff = float(np.abs(written.obsm["X_scVI"] - rig.mean).max())
    var_diff = float(np.abs(written.obsm["X_scVI_var"] - rig.var).max())
    print(f"served vs scvi-tools get_latent_representation: mean max abs {mean_diff:.3g}, var {var_diff:.3g}")
    assert mean_diff <= TOLERANCE
    assert var_diff <= TOLERANCE
    assert written.uns["genoserve"]["gene_overlap"] == 1.0
    assert np.abs(rig.mean).max() > 0.1  # a trained latent, not zeros


def test_batch_covariate_changes_the_latent(rig: Rig) -> None:
    """The encoder takes the batch: the same cells labelled with another phase embed elsewhere,
    as scvi-tools says (a model that dropped the batch input would pass the test above only by luck)."""
    pbmc = ad.read_h5ad(PBMC)
    genes, counts = list(pbmc.var_names), pbmc.layers["counts"][:20]
    with Client(rig.server.address) as client:
        g1 = client.embed(NAME, genes, counts, batch_labels=["G1"])
        s = client.embed(NAME, genes, counts, batch_labels=["S"])
    from genoserve.api.codecs.tensor import to_numpy

    g1_latent, s_latent = to_numpy(g1.latent, "latent"), to_numpy(s.latent, "latent")
    assert np.abs(g1_latent - s_latent).max() > 1e-3
    is_g1 = np.flatnonzero(pbmc.obs[BATCH_KEY].to_numpy()[:20] == "G1")
    np.testing.assert_allclose(g1_latent[is_g1], rig.mean[is_g1], atol=TOLERANCE)


def test_embedding_job_serves_the_imported_model(rig: Rig) -> None:
    """embedding.embed_h5ad takes the batch column from the imported model.yaml (batch_key)."""
    out = rig.root / "job-out"
    with Client(rig.server.address) as client:
        job = client.submit_job("embedding.embed_h5ad", [str(rig.shuffled)], str(out),
                                {"model": NAME, "shard_size": "300"})  # fmt: skip
        done = wait_for_job(client, job.id, timeout=180)
    assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, (done.error, rig.worker.log())
    written = ad.read_h5ad(out / "shuffled.embedded.h5ad")
    assert float(np.abs(written.obsm["X_scVI"] - rig.mean).max()) <= TOLERANCE


def test_refuses_covariates_the_encoder_takes_and_accepts_decoder_only_ones(tmp_path: Path) -> None:
    """Categorical covariates besides the batch in the encoder cannot be fed: refused, nothing
    written. Seen by the decoder only they do not reach the latent: imported."""
    adata = ad.read_h5ad(PBMC)[:200].copy()
    for encode, name in ((True, "covariates-in"), (False, "covariates-out")):
        scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=BATCH_KEY,
                                      categorical_covariate_keys=["louvain"])  # fmt: skip
        scvi.model.SCVI(adata, n_hidden=16, n_latent=4, encode_covariates=encode).save(str(tmp_path / name))
    from genoserve.core.errors import InvalidArgument
    from genoserve.core.settings import RuntimeSettings
    from genoserve.importers.scvi import import_scvi

    with pytest.raises(InvalidArgument, match=r"the encoder takes covariates besides the batch \(\['louvain'\]"):
        import_scvi(tmp_path / "covariates-in", tmp_path / "models", "x", RuntimeSettings())
    assert not (tmp_path / "models" / "x").exists()
    done = import_scvi(tmp_path / "covariates-out", tmp_path / "models", "y", RuntimeSettings())
    assert done.check.version == "1"
    spec = yaml.safe_load((tmp_path / "models" / "y" / "model.yaml").read_text())
    assert [port["name"] for port in spec["inputs"]] == ["counts"]  # the batch goes to the decoder only
    assert spec["preprocessing"]["encode_covariates"] is False
    assert spec["preprocessing"]["batch_key"] == ""
    assert "decoder-only covariates ['louvain', 'phase']" in spec["description"]


@pytest.mark.parametrize(
    "options",
    [
        {"log_variational": False, "gene_likelihood": "nb"},
        {"use_observed_lib_size": False, "gene_likelihood": "poisson", "encode_covariates": True},
        {"n_layers": 2, "deeply_inject_covariates": False, "encode_covariates": True, "use_layer_norm": "both",
         "use_batch_norm": "none"},
    ],
    ids=["raw-counts-nb", "library-encoder-poisson", "layer-norm-shallow-injection"],
)  # fmt: skip
def test_module_options_give_scvi_tools_posterior(tmp_path: Path, options: dict[str, Any]) -> None:
    """Options that change the encoder's computation: the imported graph gives scvi-tools' own
    posterior on the real counts (weights as initialised: the wiring is what is checked)."""
    import onnxruntime as ort

    from genoserve.core.settings import RuntimeSettings
    from genoserve.importers.scvi import import_scvi, scvi_posterior

    scvi.settings.seed = 0
    adata = ad.read_h5ad(PBMC)[:300].copy()
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key=BATCH_KEY)
    model = scvi.model.SCVI(adata, n_hidden=32, n_latent=6, **options)
    model.save(str(tmp_path / "scvi"))
    done = import_scvi(tmp_path / "scvi", tmp_path / "models", "m", RuntimeSettings())
    assert done.summary.log_variational == options.get("log_variational", True)
    assert done.summary.observed_library == options.get("use_observed_lib_size", True)
    counts = adata.layers["counts"].toarray().astype(np.float32)
    batch = None
    feeds = {"counts": counts}
    if done.summary.takes_batch:
        batch = (adata.obs[BATCH_KEY].to_numpy()[:, None] == np.array(done.summary.batches)[None]).astype(np.float32)
        feeds["batch"] = batch
    session = ort.InferenceSession(str(tmp_path / "models" / "m" / "1" / "model.onnx"))
    mean, var = session.run(["latent_mean", "latent_var"], feeds)
    want_mean, want_var = scvi_posterior(model.module.eval(), counts, batch)
    assert np.abs(mean - want_mean).max() <= TOLERANCE
    assert np.abs(var - want_var).max() <= TOLERANCE
    assert ("batch" in feeds) == bool(options.get("encode_covariates"))

"""Embedding training: a quick run exports a loadable ONNX encoder that matches PyTorch; the
committed models reproduce the metrics in their model.yaml and meet their goals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from genoserve.embedding.contract import EmbeddingContract
from genoserve.runtime.registry import read_spec
from genoserve.training.embedding.evaluate import evaluate, onnx_embed
from genoserve.training.embedding.simulate import SimConfig, simulate
from genoserve.training.embedding.train import (
    TrainConfig,
    TrainLog,
    export_encoder,
    main,
    pbmc_dataset,
    sim_dataset,
    torch_embed,
    train_vae,
)
from genoserve.training.embedding.vae import VaeConfig

MODELS = Path(__file__).resolve().parents[3] / "models"


def metrics_of(name: str) -> dict[str, float]:
    spec = yaml.safe_load((MODELS / name / "model.yaml").read_text())
    return dict(spec["versions"][-1]["metrics"])


def test_quick_training_exports_a_loadable_model(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--seed", "1", "--quick", "--threads", "1"])
    for name in ("scvi-pbmc", "scvi-sim-batch"):
        spec = read_spec(tmp_path / name)  # the registry's own checks
        contract = EmbeddingContract.of(spec)
        assert contract.n_latent == 10
        session = ort.InferenceSession(str(tmp_path / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [t.name for t in spec.inputs]
    assert EmbeddingContract.of(read_spec(tmp_path / "scvi-sim-batch")).batches == ("batch0", "batch1", "batch2")


@pytest.mark.parametrize("encode_covariates", [False, True])
def test_onnx_encoder_matches_pytorch(encode_covariates: bool) -> None:
    torch.set_num_threads(1)
    data = sim_dataset(3, SimConfig(n_cells=300, n_genes=150, n_batches=2))
    config = VaeConfig(n_genes=150, n_batches=2, encode_covariates=encode_covariates, likelihood="nb")
    vae = train_vae(data, config, TrainConfig(epochs=2, batch_size=64), seed=0, log=False)
    batches = data.batch_names if encode_covariates else []
    got = onnx_embed(export_encoder(vae), batches)(data.test.counts, data.test.batches)
    expected, _ = torch_embed(vae, data.test.counts, data.test.batches, data.batch_names)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_early_stopping_watches_validation_cells_after_the_warm_up() -> None:
    torch.set_num_threads(1)
    data = sim_dataset(2, SimConfig(n_cells=200, n_genes=60, n_batches=2))
    config = VaeConfig(n_genes=60, n_batches=2, n_hidden=32, encode_covariates=True, likelihood="nb")
    record = TrainLog()
    train = TrainConfig(epochs=60, batch_size=64, lr=2e-2, kl_warmup_epochs=3, patience=3)
    train_vae(data, config, train, seed=0, log=False, record=record)
    assert record.epochs_run < 60  # stopped early
    assert record.best_epoch >= 3  # never picks a warm-up epoch
    assert record.epochs_run - 1 - record.best_epoch == 3  # patience epochs without improvement
    assert np.isfinite(record.best_validation_elbo)


def test_simulator_has_types_batches_and_library_variation() -> None:
    data = simulate(SimConfig(n_cells=400, n_genes=300), 0)
    assert data.counts.shape == (400, 300)
    assert (data.counts == np.round(data.counts)).all()
    assert set(data.batches) == {"batch0", "batch1", "batch2"}
    assert len(set(data.cell_types)) == 6
    totals = data.counts.sum(1)
    assert totals.max() / totals.min() > 3


def test_committed_pbmc_model_reproduces_its_metrics_and_beats_pca_on_knn_and_asw() -> None:
    recorded = metrics_of("scvi-pbmc")
    data = pbmc_dataset(0)
    got = evaluate(onnx_embed(str(MODELS / "scvi-pbmc" / "1" / "model.onnx"), []), data.train, data.test, 10)
    for key in ("knn_accuracy", "asw_scaled", "pca_knn_accuracy", "pca_asw_scaled"):
        assert got[key] == pytest.approx(recorded[key], abs=1e-4), key
    assert got["knn_accuracy"] >= got["pca_knn_accuracy"]
    assert got["asw_scaled"] >= got["pca_asw_scaled"]  # the goal: at least PCA on both


def test_committed_batch_model_mixes_batches_better_than_pca_on_fresh_cells() -> None:
    recorded = metrics_of("scvi-sim-batch")
    assert recorded["batch_mixing"] > recorded["pca_batch_mixing"]
    # The model's seed (0) fixes genes, cell types and batch effects; cell_seed draws new cells.
    fresh = sim_dataset(0, SimConfig(n_cells=1600), cell_seed=123)
    categories = list(EmbeddingContract.of(read_spec(MODELS / "scvi-sim-batch")).batches)
    embed = onnx_embed(str(MODELS / "scvi-sim-batch" / "1" / "model.onnx"), categories)
    got = evaluate(embed, fresh.train, fresh.test, 10)
    assert got["batch_mixing"] > got["pca_batch_mixing"] + 0.2
    assert got["knn_accuracy"] >= recorded["pca_knn_accuracy"] - 0.05

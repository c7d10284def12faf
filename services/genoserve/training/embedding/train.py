"""Train the embedding models and write them to the model repository.

- ``scvi-pbmc``: scVI on the real PBMC counts (700 cells x 765 genes, tests/data/embedding),
  70 / 30 split stratified by cell type; metrics on the held-out 30%.
- ``scvi-sim-batch``: scVI with a batch covariate (in the decoder and the encoder) on simulated
  counts (2,000 genes, 6 cell types, 3 batches); metrics on held-out simulated cells.

Each model's encoder is exported to ONNX with its gene list as the ``counts`` input's labels.

    python -m genoserve.training.embedding.train --out models --seed 0 [--quick] [--only scvi-pbmc]
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from genoserve.embedding.counts import aligned_dense
from genoserve.embedding.genes import align
from genoserve.embedding.h5io import H5adCounts, open_counts, read_obs_column
from genoserve.training.embedding.evaluate import Split, evaluate, onnx_embed
from genoserve.training.embedding.simulate import SimConfig, simulate
from genoserve.training.embedding.vae import ExportedEncoder, Vae, VaeConfig
from genoserve.training.modelyaml import write_model_dir

Array = np.ndarray[Any, Any]

REPO = Path(__file__).resolve().parents[4]
PBMC = REPO / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"
PBMC_LABELS = "bulk_labels"


@dataclass(frozen=True)
class TrainConfig:
    """Adam settings, minibatch size and scVI's KL warm-up; optional early stopping.

    ``kl_warmup_epochs``: the KL weight rises linearly from 0 to 1 over this many epochs
    (scvi-tools' ``n_epochs_kl_warmup``, default 400); ``None`` = over all ``epochs``; it ends at
    ``max_kl_weight`` (scvi-tools' ``TrainingPlan(max_kl_weight=...)``, default 1.0).
    ``patience``: when set, ``validation_fraction`` of the TRAINING cells (stratified by label)
    is held back, the ELBO (full KL weight) on it is computed after every epoch once the warm-up
    is over, training stops when it has not improved for ``patience`` epochs, and the best
    epoch's weights are kept (scvi-tools' ``early_stopping`` monitors ``elbo_validation`` too;
    watching it during the warm-up stopped training before the batch effect was removed).
    """

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    kl_warmup_epochs: int | None = None
    max_kl_weight: float = 1.0
    patience: int | None = None
    validation_fraction: float = 0.1


@dataclass(frozen=True)
class Dataset:
    genes: list[str]
    train: Split
    test: Split
    batch_names: list[str]


def stratified_split(labels: Array, test_fraction: float, seed: int) -> tuple[Array, Array]:
    """(train indices, test indices), each label split in the same proportion."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.extend(members[: round(test_fraction * len(members))].tolist())
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def pbmc_dataset(seed: int, path: Path = PBMC) -> Dataset:
    with open_counts(path) as source:
        assert isinstance(source, H5adCounts)
        counts = aligned_dense(source.read(0, source.n_cells), align(source.genes, source.genes))
        genes = source.genes
    labels = np.array(read_obs_column(path, PBMC_LABELS, 0, counts.shape[0]))
    train, test = stratified_split(labels, 0.3, seed)
    return Dataset(genes, Split(counts[train], labels[train]), Split(counts[test], labels[test]), [])


def sim_dataset(seed: int, config: SimConfig, cell_seed: int | None = None) -> Dataset:
    data = simulate(config, seed, cell_seed)
    train, test = stratified_split(np.char.add(data.cell_types, data.batches), 0.25, seed)
    return Dataset(
        data.genes,
        Split(data.counts[train], data.cell_types[train], data.batches[train]),
        Split(data.counts[test], data.cell_types[test], data.batches[test]),
        data.batch_names,
    )


def _one_hot(labels: Array | None, names: list[str]) -> torch.Tensor | None:
    if not names or labels is None:
        return None
    return torch.from_numpy((np.asarray(labels)[:, None] == np.array(names)[None, :]).astype(np.float32))


def _subset(split: Split, index: Array) -> Split:
    return Split(split.counts[index], split.labels[index], None if split.batches is None else split.batches[index])


@dataclass
class TrainLog:
    """What a training run did: epochs run, the epoch whose weights were kept, its validation ELBO."""

    epochs_run: int = 0
    best_epoch: int = -1
    best_validation_elbo: float = float("nan")


def _validation_elbo(vae: Vae, counts: torch.Tensor, batch: torch.Tensor | None) -> float:
    """-ELBO per cell (reconstruction + full KL), eval mode (BatchNorm running stats, no dropout)."""
    vae.eval()
    with torch.no_grad():
        loss, _, _ = vae.loss(counts, batch, 1.0)
    return float(loss)


def train_vae(data: Dataset, config: VaeConfig, train: TrainConfig, seed: int, log: bool = True,
              record: TrainLog | None = None) -> Vae:  # fmt: skip
    """Adam (eps 0.01 as scvi-tools), minibatches, KL weight ramped linearly from 0 to 1 over
    ``kl_warmup_epochs`` (scVI's warm-up), optional early stopping on a validation part of
    ``data.train`` (never ``data.test``)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    record = record if record is not None else TrainLog()
    fit = data.train
    validation: Split | None = None
    if train.patience is not None:
        keep, held = stratified_split(np.asarray(fit.labels), train.validation_fraction, seed + 1)
        fit, validation = _subset(fit, keep), _subset(fit, held)
    vae = Vae(config)
    optimiser = torch.optim.Adam(vae.parameters(), lr=train.lr, weight_decay=train.weight_decay, eps=0.01)
    counts = torch.from_numpy(fit.counts)
    batch = _one_hot(fit.batches, data.batch_names)
    if validation is not None:
        val_counts, val_batch = torch.from_numpy(validation.counts), _one_hot(validation.batches, data.batch_names)
    warmup = train.kl_warmup_epochs if train.kl_warmup_epochs is not None else max(1, train.epochs - 1)
    n = counts.shape[0]
    best_state: dict[str, torch.Tensor] | None = None
    started = time.perf_counter()
    for epoch in range(train.epochs):
        vae.train()
        kl_weight = train.max_kl_weight * min(1.0, epoch / max(1, warmup))
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, train.batch_size):
            index = order[i : i + train.batch_size]
            if len(index) < 2:  # BatchNorm needs two cells
                continue
            loss, _, _ = vae.loss(counts[index], batch[index] if batch is not None else None, kl_weight)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total += float(loss.detach()) * len(index)
        record.epochs_run = epoch + 1
        message = ""
        if validation is not None and epoch >= warmup:  # watched once the KL weight is full
            elbo = _validation_elbo(vae, val_counts, val_batch)
            message = f"  validation -elbo {elbo:10.2f}"
            if not elbo >= record.best_validation_elbo:  # nan-safe: the first watched epoch always counts
                record.best_epoch, record.best_validation_elbo = epoch, elbo
                best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            assert train.patience is not None
            stop = epoch - record.best_epoch >= train.patience
        else:
            record.best_epoch, stop = epoch, False
        if log and (epoch % 50 == 0 or epoch == train.epochs - 1 or stop):
            print(f"  epoch {epoch:4d}  loss {total / n:10.2f}  kl_weight {kl_weight:.2f}{message}  "
                  f"{time.perf_counter() - started:6.1f} s", flush=True)  # fmt: skip
        if stop:
            break
    if best_state is not None:
        vae.load_state_dict(best_state)
    return vae.eval()


def export_encoder(vae: Vae) -> bytes:
    """The encoder as ONNX: counts [B, G] (+ batch [B, K]) -> latent_mean, latent_var [B, d]."""
    config = vae.config
    module = ExportedEncoder(vae.encoder).eval()
    takes_batch = config.encode_covariates and config.n_batches > 0
    example: tuple[torch.Tensor, ...] = (torch.ones(4, config.n_genes),)
    names = ["counts"]
    if takes_batch:
        example += (torch.eye(config.n_batches)[torch.zeros(4, dtype=torch.long)],)
        names.append("batch")
    buffer = io.BytesIO()
    axes = {name: {0: "cells"} for name in [*names, "latent_mean", "latent_var"]}
    torch.onnx.export(
        module, example, buffer,  # type: ignore[arg-type]
        input_names=names, output_names=["latent_mean", "latent_var"], dynamic_axes=axes, opset_version=17,
        dynamo=False,
    )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "genoserve"
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def torch_embed(vae: Vae, counts: Array, batch: Array | None, names: list[str]) -> tuple[Array, Array]:
    with torch.no_grad():
        mean, var = vae.encoder(torch.from_numpy(counts.astype(np.float32)), _one_hot(batch, names))
    return mean.numpy(), var.numpy()


def model_spec(name: str, description: str, genes: list[str], config: VaeConfig, batch_key: str) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [{
        "name": "counts", "dtype": "float32", "shape": [-1, len(genes)], "labels": list(genes),
        "description": "raw counts per cell in this gene order (labels); genoserve aligns requests by gene name",
    }]  # fmt: skip
    if config.encode_covariates and config.n_batches:
        inputs.append({"name": "batch", "dtype": "float32", "shape": [-1, config.n_batches],
                       "labels": [f"batch{b}" for b in range(config.n_batches)],
                       "description": "one-hot batch covariate, categories in labels order"})  # fmt: skip
    latent = [-1, config.n_latent]
    return {
        "name": name, "family": "embedding", "description": description,
        "inputs": inputs,
        "outputs": [
            {"name": "latent_mean", "dtype": "float32", "shape": latent, "description": "mean of q(z | x)"},
            {"name": "latent_var", "dtype": "float32", "shape": latent, "description": "variance of q(z | x)"},
        ],
        "preprocessing": {
            "architecture": "scvi", "likelihood": config.likelihood, "n_hidden": config.n_hidden,
            "n_latent": config.n_latent, "encode_covariates": config.encode_covariates, "batch_key": batch_key,
        },
        "batching": {"max_batch_size": 4096, "max_queue_delay_us": 1000, "max_queue_size": 4096},
        # On a CPU: one single-threaded call per core, a lone request split across the idle ones
        # (tests/bench/embedding_bench.py; genoserve.runtime.batcher).
        "cpu_serving": {"intra_op_threads": 1, "instances": 0, "split_rows": 512},
    }  # fmt: skip


def build(name: str, data: Dataset, config: VaeConfig, train: TrainConfig, seed: int, out: Path,
          description: str, batch_key: str, provenance: dict[str, str]) -> dict[str, float]:  # fmt: skip
    print(f"{name}: {len(data.train.labels)} training cells x {len(data.genes)} genes, {train.epochs} epochs")
    started = time.perf_counter()
    record = TrainLog()
    vae = train_vae(data, config, train, seed, record=record)
    seconds = time.perf_counter() - started
    onnx_bytes = export_encoder(vae)
    embed = onnx_embed(onnx_bytes, data.batch_names if config.encode_covariates else [])
    metrics = evaluate(embed, data.train, data.test, config.n_latent)
    # The shipped ONNX encoder against PyTorch on held-out cells.
    mean, _ = torch_embed(vae, data.test.counts, data.test.batches, data.batch_names)
    metrics["max_abs_error_onnx_vs_torch"] = float(np.abs(embed(data.test.counts, data.test.batches) - mean).max())
    metrics["train_seconds"] = round(seconds, 1)
    metrics["epochs_run"] = float(record.epochs_run)
    spec = model_spec(name, description, data.genes, config, batch_key)
    if config.encode_covariates and config.n_batches:
        spec["inputs"][1]["labels"] = data.batch_names
    write_model_dir(out, spec, 1, onnx_bytes, metrics, {
        "script": "genoserve.training.embedding.train", "seed": str(seed), "epochs": str(train.epochs),
        "train": str(asdict(train)), "kept_epoch": str(record.best_epoch),
        "vae": str(asdict(config)), **provenance,
    })  # fmt: skip
    print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics


PBMC_VAE = {"n_hidden": 128, "n_latent": 10, "dropout": 0.1, "likelihood": "zinb"}
#: scvi-tools' schedule (400 epochs, KL warm-up 400) with the final KL weight 16, chosen by
#: ``genoserve.training.embedding.select`` (3-fold cross-validation on the training cells only):
#: kNN 0.807 vs PCA 0.784, ASW 0.634 vs 0.620 (weight 1: 0.784 / 0.576; 8: 0.792 / 0.600;
#: 32: 0.776 / 0.634). A larger KL weight switches off latent dimensions that carry no cell-type
#: signal (their posterior means stay near 0), which is what the silhouette rewards.
PBMC_TRAIN = TrainConfig(epochs=400, kl_warmup_epochs=400, max_kl_weight=16.0)
PBMC_SELECTION = ("genoserve.training.embedding.select: 3-fold CV on the 491 training cells; max KL weight 16 "
                  "kNN 0.807 (PCA 0.784), ASW 0.634 (PCA 0.620); weights 1 / 8 / 32 scored lower")  # fmt: skip
#: 3,000 cells (2,250 for training) in minibatches of 512 with early stopping: ~2 min on one
#: core, where 6,000 cells x 120 epochs of 128 took ~19 min; the batch mixing stays far above PCA's.
SIM_CONFIG = SimConfig(n_cells=3000)
SIM_TRAIN = TrainConfig(epochs=200, batch_size=512, lr=3e-3, kl_warmup_epochs=50, patience=20)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few epochs on small data (tests)")
    parser.add_argument("--only", choices=["scvi-pbmc", "scvi-sim-batch"], default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the recorded models' setting)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.only in (None, "scvi-pbmc"):
        data = pbmc_dataset(args.seed)
        config = VaeConfig(n_genes=len(data.genes), **PBMC_VAE)  # type: ignore[arg-type]
        pbmc_train = replace(PBMC_TRAIN, epochs=3) if args.quick else PBMC_TRAIN
        build("scvi-pbmc", data, config, pbmc_train, args.seed, args.out,
              "scVI encoder trained on 491 real PBMCs (pbmc68k_reduced counts, 765 genes); ZINB decoder; "
              "final KL weight 16 (chosen by cross-validation on the training cells).",
              "", {"data": "tests/data/embedding/pbmc68k_reduced_counts_700x765.h5ad", "labels": PBMC_LABELS,
                       "split": "70/30 stratified by bulk_labels, seed above",
                       "selection": PBMC_SELECTION})  # fmt: skip
    if args.only in (None, "scvi-sim-batch"):
        sim = SimConfig(n_cells=600, n_genes=300) if args.quick else SIM_CONFIG
        data = sim_dataset(args.seed, sim)
        config = VaeConfig(n_genes=len(data.genes), n_batches=len(data.batch_names), encode_covariates=True,
                           n_hidden=128, n_latent=10, dropout=0.1, likelihood="nb")  # fmt: skip
        sim_train = replace(SIM_TRAIN, epochs=2) if args.quick else SIM_TRAIN
        build("scvi-sim-batch", data, config, sim_train, args.seed, args.out,
              "scVI with a batch covariate (decoder and encoder) on simulated NB counts: 2,000 genes, 6 cell "
              "types, 3 batches.", "batch",
              {"data": f"genoserve.training.embedding.simulate {asdict(sim)}, seed above", "labels": "cell type",
               "split": "75/25 stratified by cell type and batch"})  # fmt: skip


if __name__ == "__main__":
    main()

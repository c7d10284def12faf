"""Metrics of an embedding next to the PCA baseline on the same genes, on held-out cells.

kNN accuracy: held-out cells labelled by their k = 15 nearest training cells (each set embedded
by the same model; PCA fitted on the training cells). Scaled silhouette and batch mixing: on the
held-out cells. See ``genoserve.embedding.metrics`` for the definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.embedding.metrics import batch_mixing, knn_accuracy, scaled_silhouette
from genoserve.embedding.pca import Pca

Array = np.ndarray[Any, Any]
#: (counts float32 [n, G], batch labels or None) -> latent float32 [n, d]
EmbedFn = Callable[[Array, Array | None], Array]

K = 15


@dataclass(frozen=True)
class Split:
    """counts float32 [n, G] in the model's gene order; labels str [n]; batches str [n] or None."""

    counts: Array
    labels: Array
    batches: Array | None = None


def _scores(train: Array, test: Array, data_train: Split, data_test: Split) -> dict[str, float]:
    out = {
        "knn_accuracy": knn_accuracy(train, data_train.labels, test, data_test.labels, K),
        "asw_scaled": scaled_silhouette(test, data_test.labels),
    }
    if data_test.batches is not None:
        out["batch_mixing"] = batch_mixing(test, data_test.batches, K)
    return out


def evaluate(embed: EmbedFn, train: Split, test: Split, n_components: int) -> dict[str, float]:
    """``knn_accuracy``, ``asw_scaled`` (+ ``batch_mixing``) of the model and ``pca_*`` of PCA."""
    model = _scores(embed(train.counts, train.batches), embed(test.counts, test.batches), train, test)
    pca = Pca.fit(train.counts, n_components)
    baseline = _scores(pca.transform(train.counts), pca.transform(test.counts), train, test)
    return {**model, **{f"pca_{k}": v for k, v in baseline.items()}, "held_out_cells": float(len(test.labels))}


def onnx_embed(model_bytes_or_path: bytes | str, batches: list[str]) -> EmbedFn:
    """An EmbedFn running the exported encoder in ONNX Runtime (what genoserve serves)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])

    def run(counts: Array, labels: Array | None) -> Array:
        feeds = {"counts": counts.astype(np.float32)}
        if batches:
            assert labels is not None
            feeds["batch"] = (np.asarray(labels)[:, None] == np.array(batches)[None, :]).astype(np.float32)
        out: Array = session.run(["latent_mean"], feeds)[0]
        return out

    return run

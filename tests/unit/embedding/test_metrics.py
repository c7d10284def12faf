"""kNN accuracy, scaled silhouette, batch mixing and the PCA baseline."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.embedding.metrics import batch_mixing, knn_accuracy, neighbours, scaled_silhouette, silhouette
from genoserve.embedding.pca import Pca, log_normalise, project_2d


def clusters(n: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.eye(3, 5) * separation
    return (centres[labels] + rng.normal(size=(n, 5))).astype(np.float32), labels


def test_neighbours_exact_and_self_excluded() -> None:
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert neighbours(points, points, 2).tolist() == [[0, 1], [1, 0], [2, 1], [3, 2]]
    assert neighbours(points, points, 1, exclude_self=True, block=3).ravel().tolist() == [1, 0, 1, 2]


def test_knn_accuracy_separated_and_random() -> None:
    ref, ref_labels = clusters(300, 20.0, 0)
    query, query_labels = clusters(100, 20.0, 1)
    assert knn_accuracy(ref, ref_labels, query, query_labels, k=15) == 1.0
    shuffled = np.random.default_rng(2).permutation(ref_labels)
    assert knn_accuracy(ref, shuffled, query, query_labels, k=15) < 0.6


def test_silhouette_by_hand() -> None:
    points = np.array([[0.0], [1.0], [10.0], [12.0]])
    labels = [0, 0, 1, 1]
    # a = within-label mean distance, b = nearest other label's mean distance, s = (b - a) / max(a, b)
    s = [(11 - 1) / 11, (10 - 1) / 10, (9.5 - 2) / 9.5, (11.5 - 2) / 11.5]
    assert silhouette(points, labels) == pytest.approx(np.mean(s))
    assert scaled_silhouette(points, labels) == pytest.approx((np.mean(s) + 1) / 2)
    with pytest.raises(ValueError, match="two labels"):
        silhouette(points, [0, 0, 0, 0])


def test_batch_mixing_extremes() -> None:
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(400, 4))
    batches = np.repeat(["a", "b"], 200)
    assert batch_mixing(mixed, batches) > 0.9
    apart = mixed + np.where(batches == "a", 0.0, 50.0)[:, None]
    assert batch_mixing(apart, batches) == 0.0


def test_pca_baseline_separates_cell_types_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    profiles = rng.gamma(0.5, 1.0, size=(3, 200))
    profiles /= profiles.sum(1, keepdims=True)
    labels = rng.integers(0, 3, 600)
    library = rng.lognormal(7, 0.4, size=600)
    counts = rng.poisson(profiles[labels] * library[:, None]).astype(np.float32)
    pca = Pca.fit(counts[:400], 10)
    again = Pca.fit(counts[:400], 10)
    np.testing.assert_array_equal(pca.components, again.components)
    train, test = pca.transform(counts[:400]), pca.transform(counts[400:])
    assert train.shape == (400, 10)
    assert train.dtype == np.float32
    assert knn_accuracy(train, labels[:400], test, labels[400:]) > 0.95
    assert np.allclose(np.expm1(log_normalise(counts[:2])).sum(1), 1e4)
    flat = project_2d(train)
    assert flat.shape == (400, 2)
    assert np.var(flat[:, 0]) >= np.var(flat[:, 1])

"""The picture's UMAP: clusters of the input stay clusters in 2-d, the graph is a fuzzy union,
and a seed fixes the layout."""

from __future__ import annotations

import numpy as np

from genoserve.embedding.metrics import knn_accuracy, scaled_silhouette
from genoserve.embedding.umap import fuzzy_graph, umap


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 5.0, size=(5, 10))
    labels = rng.integers(0, 5, size=n)
    return (centres[labels] + rng.normal(size=(n, 10))).astype(np.float32), labels


def test_fuzzy_graph_is_symmetric_with_weights_in_0_1() -> None:
    points, _ = blobs(200, 0)
    graph = fuzzy_graph(points, k=10).tocsr()
    assert abs(graph - graph.T).max() < 1e-12
    assert graph.data.min() > 0
    assert graph.data.max() <= 1.0 + 1e-12
    assert graph.diagonal().max() == 0
    # Every point keeps an edge of weight 1 to its nearest neighbour (rho makes it so).
    assert np.allclose(graph.max(axis=1).toarray().ravel(), 1.0)


def test_umap_keeps_clusters_and_is_seeded() -> None:
    points, labels = blobs(600, 1)
    layout = umap(points, n_epochs=100, seed=3)
    assert layout.shape == (600, 2)
    assert layout.dtype == np.float32
    assert np.isfinite(layout).all()
    assert knn_accuracy(layout[:400], labels[:400], layout[400:], labels[400:]) > 0.97
    assert scaled_silhouette(layout, labels) > 0.8
    np.testing.assert_array_equal(layout, umap(points, n_epochs=100, seed=3))

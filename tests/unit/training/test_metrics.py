"""auROC and auPRC agree with hand-computed values (scikit-learn's definitions), ties included."""

from __future__ import annotations

import numpy as np
import pytest

from genoserve.training.metrics import auprc, auroc


def test_small_example_matches_hand_computation() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4.
    assert auroc(labels, scores) == pytest.approx(0.75)
    # Thresholds 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1): .5*1 + .5*2/3.
    assert auprc(labels, scores) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_perfect_and_reversed_rankings() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert auroc(labels, scores) == 1.0
    assert auprc(labels, scores) == 1.0
    assert auroc(labels, -scores) == 0.0
    assert auprc(labels, -scores) == pytest.approx(0.5 * 1 / 4 + 0.5 * 2 / 5)  # positives ranked 4th and 5th


def test_ties_count_half_and_do_not_depend_on_order() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1])
    constant = np.zeros(6)
    assert auroc(labels, constant) == 0.5
    assert auprc(labels, constant) == pytest.approx(0.5)  # one threshold: precision = prevalence
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.9])
    permutation = np.random.default_rng(0).permutation(6)
    assert auroc(labels, scores) == auroc(labels[permutation], scores[permutation])
    assert auprc(labels, scores) == auprc(labels[permutation], scores[permutation])


def test_two_dimensional_inputs_are_flattened_and_bad_inputs_refused() -> None:
    labels = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert auroc(labels, scores) == 1.0
    with pytest.raises(ValueError, match="both positives and negatives"):
        auroc(np.ones(3), np.arange(3.0))
    with pytest.raises(ValueError, match="differ in size"):
        auprc(np.array([0, 1]), np.arange(3.0))
    with pytest.raises(ValueError, match="finite"):
        auprc(np.array([0, 1]), np.array([0.0, np.nan]))

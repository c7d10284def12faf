"""Ranking metrics for binary labels in plain numpy (no scikit-learn; shared by every family).

Both take ``labels`` (any shape, 0/1 or bool) and ``scores`` (same shape, any real values; higher
means more likely positive) and flatten them. Ties are handled as scikit-learn does: tied scores
form one threshold, so the result does not depend on the order of the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def _flatten(labels: Array, scores: Array) -> tuple[Array, Array]:
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {y.size} vs {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if y.all() or not y.any():
        raise ValueError("labels need both positives and negatives")
    return y, s


def auroc(labels: Array, scores: Array) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting one half (Mann-Whitney U with average ranks)."""
    y, s = _flatten(labels, scores)
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average rank (1-based) for each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(labels: Array, scores: Array) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision at that threshold
    (scikit-learn's ``average_precision_score``; no interpolation)."""
    y, s = _flatten(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    # The last index of each run of tied scores is where a threshold takes effect.
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), s.size - 1]
    true_pos = np.cumsum(y_desc)[last].astype(np.float64)
    predicted_pos = (last + 1).astype(np.float64)
    precision = true_pos / predicted_pos
    recall = true_pos / y.sum()
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))

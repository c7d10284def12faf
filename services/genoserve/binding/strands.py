"""Both strands in one batch, and their combination: forward, max or mean of the logits."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from genoserve.binding.encoding import reverse_complement

Array = np.ndarray[Any, Any]
StrandMode = Literal["forward", "max", "mean"]


def with_reverse(batch: Array, mode: StrandMode) -> Array:
    """The batch to run: [B, L, 4] for forward, else forward then reverse complement [2B, L, 4]."""
    if mode == "forward":
        return batch
    return np.concatenate([batch, reverse_complement(batch)])


def combine(logits: Array, mode: StrandMode) -> Array:
    """Logits of ``with_reverse``'s batch -> [B, T] per the strand mode."""
    if mode == "forward":
        return logits
    half = logits.shape[0] // 2
    forward, reverse = logits[:half], logits[half:]
    if mode == "max":
        return np.maximum(forward, reverse)
    return (forward + reverse) / 2


def sigmoid(logits: Array) -> Array:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

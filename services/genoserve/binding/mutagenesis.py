"""In-silico saturation mutagenesis: every single-base substitution of one sequence, one batch."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def saturation_batch(onehot: Array) -> tuple[Array, Array, Array]:
    """All substitutions of a [L, 4] one-hot: (batch [1 + 3L, L, 4], positions [3L], bases [3L]).

    Row 0 is the unmutated sequence; row 1 + k has base ``bases[k]`` at ``positions[k]``. At an N
    position every base is a substitution, so only the three bases that differ from the argmax
    (A for N) are used there too, keeping the batch size fixed at 1 + 3L.
    """
    length = onehot.shape[0]
    own = onehot.argmax(axis=1)
    positions = np.repeat(np.arange(length), 3)
    others = np.array([[b for b in range(4) if b != o] for o in range(4)])
    bases = others[own].reshape(-1)
    batch = np.repeat(onehot[None], 1 + 3 * length, axis=0)
    rows = np.arange(1, 1 + 3 * length)
    batch[rows, positions, :] = 0.0
    batch[rows, positions, bases] = 1.0
    return batch, positions, bases


def deltas(values: Array, positions: Array, bases: Array, length: int) -> Array:
    """Scores of ``saturation_batch`` rows [1 + 3L, T] -> deltas [L, 4, T], 0 at the own base."""
    tasks = values.shape[1]
    out = np.zeros((length, 4, tasks), dtype=np.float32)
    out[positions, bases, :] = values[1:] - values[0]
    return out

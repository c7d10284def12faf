"""DNA as integer codes and one-hot arrays (pure numpy; the layout every binding model uses).

- codes: uint8 ``[batch, length]`` with A=0, C=1, G=2, T=3, N=4.
- one-hot: float32 ``[batch, length, 4]``, channels A, C, G, T; N is 0.25 in all four channels.
- reverse complement of a one-hot array: flip the length axis and the channel axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

ALPHABET = "ACGT"
N_CODE = 4

_ENCODE = np.full(256, N_CODE, dtype=np.uint8)
for _code, _base in enumerate(ALPHABET):
    _ENCODE[ord(_base)] = _code
    _ENCODE[ord(_base.lower())] = _code
_DECODE = np.frombuffer(b"ACGTN", dtype=np.uint8)
_ONE_HOT = np.vstack([np.eye(4, dtype=np.float32), np.full((1, 4), 0.25, dtype=np.float32)])


def encode(sequence: str) -> Array:
    """Bases (either case) -> uint8 codes ``[length]``; anything but ACGT becomes N."""
    return _ENCODE[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]


def decode(codes: Array) -> str:
    """uint8 codes ``[length]`` -> upper-case bases."""
    return _DECODE[np.asarray(codes, dtype=np.uint8)].tobytes().decode("ascii")


def complement_codes(codes: Array) -> Array:
    """Reverse complement of codes along the last axis (N stays N)."""
    flipped = np.asarray(codes)[..., ::-1]
    return np.where(flipped == N_CODE, N_CODE, 3 - flipped).astype(np.uint8)


def one_hot(codes: Array) -> Array:
    """uint8 codes ``[batch, length]`` -> float32 ``[batch, length, 4]`` (N -> 0.25 each)."""
    return _ONE_HOT[np.asarray(codes, dtype=np.uint8)]


def reverse_complement(x: Array) -> Array:
    """float32 ``[batch, length, 4]`` -> its reverse complement, same shape (a contiguous copy)."""
    return np.ascontiguousarray(x[:, ::-1, ::-1])

"""Dinucleotide-preserving shuffles (pure numpy): decoys with a sequence's exact composition.

The Altschul-Erikson algorithm (Altschul & Erikson 1985, Mol. Biol. Evol. 2:526): a sequence is an
Eulerian path through the graph whose vertices are bases and whose edges are its dinucleotides.
A uniformly random Eulerian path with the same first and last base is drawn by (1) choosing for
every vertex but the last a random "last exit" edge such that these edges form a tree directed to
the last base (drawn until they do),
(2) shuffling each vertex's other exits, appending its last exit, and (3) walking from the first
base. The result has exactly the same dinucleotide counts (hence mono-nucleotide counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]


def dinucleotide_shuffle(codes: Array, rng: np.random.Generator) -> Array:
    """uint8 codes ``[length]`` -> a shuffle with the same dinucleotide counts, same first and last base."""
    seq = np.asarray(codes, dtype=np.uint8)
    if seq.size < 3:
        return seq.copy()
    first, last = int(seq[0]), int(seq[-1])
    exits: dict[int, list[int]] = {}
    for a, b in zip(seq[:-1].tolist(), seq[1:].tolist(), strict=True):
        exits.setdefault(a, []).append(b)
    # (1) Every vertex but the last gets a random last exit; keep the choice once these edges lead
    # from every vertex to `last` (a tree, no cycle), else draw again (Kandel et al. 1996).
    while True:
        last_exit = {v: t[int(rng.integers(len(t)))] for v, t in exits.items() if v != last}
        if all(_reaches(v, last, last_exit) for v in last_exit):
            break
    # (2) Shuffle each vertex's other exits and put its last exit at the end.
    order: dict[int, list[int]] = {}
    for vertex, targets in exits.items():
        rest = list(targets)
        if vertex in last_exit:
            rest.remove(last_exit[vertex])
        rest = [rest[i] for i in rng.permutation(len(rest))]
        order[vertex] = rest + ([last_exit[vertex]] if vertex in last_exit else [])
    # (3) Walk from the first base.
    out = np.empty(seq.size, dtype=np.uint8)
    out[0] = first
    position = {v: 0 for v in order}
    for i in range(1, seq.size):
        vertex = int(out[i - 1])
        out[i] = order[vertex][position[vertex]]
        position[vertex] += 1
    return out


def _reaches(vertex: int, last: int, last_exit: dict[int, int]) -> bool:
    for _ in range(len(last_exit) + 1):
        if vertex == last:
            return True
        vertex = last_exit[vertex]
    return vertex == last


def dinucleotide_counts(codes: Array, alphabet: int = 5) -> Array:
    """int64 ``[alphabet, alphabet]``: counts of each ordered pair of adjacent codes."""
    seq = np.asarray(codes, dtype=np.int64)
    counts = np.zeros((alphabet, alphabet), dtype=np.int64)
    np.add.at(counts, (seq[:-1], seq[1:]), 1)
    return counts

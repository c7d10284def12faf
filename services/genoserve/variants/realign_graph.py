"""Candidate haplotypes of one window from a de Bruijn graph of the reference and the reads.

DeepVariant's assembler (deepvariant/realigner/debruijn_graph.cc, r1.9; parameters from the
``dbg_config`` of DeepVariant 1.9's golden ``run_info``: ``min_k`` 10, ``max_k`` 101, ``step_k``
1, ``min_mapq`` 14, ``min_base_quality`` 15, ``min_edge_weight`` 2, ``max_num_paths`` 256):

- the smallest k from 10 up at which the window's reference has no repeated k-mer starts the
  search; for each k from there, the graph holds the reference path (its edges marked) and, for
  reads with mapping quality >= 14, every k-mer run free of non-ACGT bases and bases below
  quality 15 (edge weight = number of observations); a graph with a cycle moves on to k + 1;
- pruning drops non-reference edges seen fewer than 2 times and every vertex not on a path from
  the first to the last reference k-mer;
- haplotypes are all source-to-sink paths, found breadth first; more than 256 paths gives up.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from genoserve.variants.candidates import CANONICAL
from genoserve.variants.reads import Read


@dataclass(frozen=True)
class GraphOptions:
    min_k: int = 10
    max_k: int = 101
    step_k: int = 1
    min_mapq: int = 14
    min_base_quality: int = 15
    min_edge_weight: int = 2
    max_num_paths: int = 256


def _min_k(ref: str, options: GraphOptions) -> tuple[int, int] | None:
    max_k = min(options.max_k, len(ref) - 1)
    for k in range(options.min_k, max_k + 1, options.step_k):
        kmers = {ref[i : i + k] for i in range(len(ref) - k + 1)}
        if len(kmers) == len(ref) - k + 1:
            return k, max_k
    return None


#: True for the codes of A, C, G and T.
_CANONICAL_CODES = np.zeros(256, dtype=bool)
_CANONICAL_CODES[np.frombuffer("".join(sorted(CANONICAL)).encode(), dtype=np.uint8)] = True


def _good_runs(read: Read, min_base_quality: int) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of canonical bases with quality >= ``min_base_quality``."""
    codes = np.frombuffer(read.seq.encode(), dtype=np.uint8)
    good = (_CANONICAL_CODES[codes] & (read.quals >= min_base_quality)).astype(np.int8)
    bounds = np.flatnonzero(np.diff(good, prepend=0, append=0)).tolist()
    return list(zip(bounds[::2], bounds[1::2], strict=True))


class _Graph:
    def __init__(self, k: int) -> None:
        self.k = k
        self.edges: dict[str, dict[str, list[int]]] = {}  # from -> to -> [weight, is_ref]

    @classmethod
    def from_paths(cls, k: int, ref: str, segments: list[tuple[str, int, int]]) -> _Graph:
        """The graph of the reference path and of each read segment ``seq[lo:hi]`` longer than k.

        An edge is a (k + 1)-mer (its first k bases to its last k), weighted by how often the paths
        hold it; vertices and edges are kept in the order the paths first reach them.
        """
        graph = cls(k)
        span = k + 1
        counts: Counter[str] = Counter(ref[i : i + span] for i in range(len(ref) - k))
        on_ref = set(counts)
        for seq, lo, hi in segments:
            if hi - lo > k:
                counts.update(map(seq.__getitem__, map(slice, range(lo, hi - k), range(lo + span, hi + 1))))
        edges = graph.edges
        for kmer, weight in counts.items():
            head, tail = kmer[:-1], kmer[1:]
            out = edges.get(head)
            if out is None:
                out = edges[head] = {}
            out[tail] = [weight, int(kmer in on_ref)]
            if tail not in edges:
                edges[tail] = {}
        return graph

    def has_cycle(self) -> bool:
        indegree = dict.fromkeys(self.edges, 0)
        for out in self.edges.values():
            for to in out:
                indegree[to] += 1
        queue = deque(v for v, d in indegree.items() if d == 0)
        seen = 0
        while queue:
            v = queue.popleft()
            seen += 1
            for to in self.edges[v]:
                indegree[to] -= 1
                if indegree[to] == 0:
                    queue.append(to)
        return seen != len(self.edges)

    def prune(self, source: str, sink: str, min_edge_weight: int) -> None:
        for out in self.edges.values():
            for to in [t for t, (w, ref) in out.items() if not ref and w < min_edge_weight]:
                del out[to]
        forward = _reachable(source, self.edges)
        reverse_edges: dict[str, dict[str, list[int]]] = {v: {} for v in self.edges}
        for v, out in self.edges.items():
            for to in out:
                reverse_edges[to][v] = out[to]
        backward = _reachable(sink, reverse_edges)
        keep = forward & backward
        self.edges = {v: {t: e for t, e in out.items() if t in keep} for v, out in self.edges.items() if v in keep}

    def paths(self, source: str, sink: str, max_paths: int) -> list[list[str]] | None:
        done: list[list[str]] = []
        queue: deque[list[str]] = deque([[source]])
        while queue:
            if len(done) + len(queue) > max_paths:
                return None
            path = queue.popleft()
            for to in self.edges.get(path[-1], {}):
                extended = [*path, to]
                if to == sink or not self.edges.get(to):
                    done.append(extended)
                else:
                    queue.append(extended)
        return done


def _reachable(start: str, edges: dict[str, dict[str, list[int]]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for to in edges.get(stack.pop(), {}):
            if to not in seen:
                seen.add(to)
                stack.append(to)
    return seen


def candidate_haplotypes(ref: str, reads: list[Read], options: GraphOptions | None = None) -> list[str]:
    """Sorted haplotypes of the window ``ref`` ([ref] when no graph works, [] when too branchy)."""
    options = options or GraphOptions()
    bounds = _min_k(ref, options)
    if bounds is None:
        return [ref]
    segments = [
        (read.seq, lo, hi)
        for read in reads
        if read.mapping_quality >= options.min_mapq
        for lo, hi in _good_runs(read, options.min_base_quality)
    ]
    for k in range(bounds[0], bounds[1] + 1, options.step_k):
        graph = _Graph.from_paths(k, ref, segments)
        if graph.has_cycle():
            continue
        source, sink = ref[:k], ref[len(ref) - k :]
        graph.prune(source, sink, options.min_edge_weight)
        paths = graph.paths(source, sink, options.max_num_paths)
        if paths is None:
            return []
        return sorted(_spell(p) for p in paths)
    return [ref]


def _spell(path: list[str]) -> str:
    return "".join(v[0] for v in path) + path[-1][1:]

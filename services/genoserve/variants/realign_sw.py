"""Smith-Waterman alignment with affine gaps (numpy, one row at a time), as the realigner uses it.

Scores follow DeepVariant's realigner defaults (``aln_match`` 4, ``aln_mismatch`` 6,
``aln_gap_open`` 8, ``aln_gap_extend`` 2; a gap of length g costs ``8 + (g - 1) * 2``; an N
scores 0 against anything, as in the Striped Smith-Waterman library's default matrix).

``local_align`` reports what the SSW library reports: the best score, where the alignment begins
on the target, and a CIGAR with the unaligned query ends soft-clipped. Ties are broken as SSW
does: the best cell with the smallest target end (then the smallest query end); the begin is the
shortest alignment reaching that score; the CIGAR between those ends is SSW's banded traceback
(``realign_banded``: a band of ``|length difference| + 1`` diagonals, widened until it holds the
score), which prefers the diagonal, so gaps in repeats end up left-aligned. ``align_similar`` gives
the same for a haplotype against its reference without the full-matrix passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from genoserve.variants.reads import OP_D, OP_I, OP_M, OP_S, merge_cigar
from genoserve.variants.realign_banded import banded_cigar

Cigar = list[tuple[int, int]]
_NEG = np.int32(-(10**8))


@dataclass(frozen=True)
class Scoring:
    match: int = 4
    mismatch: int = 6
    gap_open: int = 8
    gap_extend: int = 2


@dataclass
class LocalAlignment:
    score: int
    target_begin: int
    cigar: Cigar  # pysam op codes; M for both matches and mismatches


def _codes(seq: str) -> npt.NDArray[np.uint8]:
    return np.frombuffer(seq.encode(), dtype=np.uint8)


def _substitution(query: str, target: str, scoring: Scoring) -> npt.NDArray[np.int32]:
    """``(len(query), len(target))`` scores: match, -mismatch, 0 where either base is N."""
    q = _codes(query)[:, None]
    t = _codes(target)[None, :]
    s = np.where(q == t, scoring.match, -scoring.mismatch).astype(np.int32)
    n = ord("N")
    s[(q == n) | (t == n)] = 0
    return s


def _fill(
    sub: npt.NDArray[np.int32], scoring: Scoring, local: bool
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """H, E (gap consuming target), F (gap consuming query), each ``(m + 1, n + 1)``."""
    m, n = sub.shape
    go, ge = scoring.gap_open, scoring.gap_extend
    h = np.zeros((m + 1, n + 1), dtype=np.int32)
    e = np.full((m + 1, n + 1), _NEG, dtype=np.int32)
    f = np.full((m + 1, n + 1), _NEG, dtype=np.int32)
    if not local:
        steps = np.arange(1, n + 1, dtype=np.int32)
        h[0, 1:] = -(go + (steps - 1) * ge)
        e[0, 1:] = h[0, 1:]
        rows = np.arange(1, m + 1, dtype=np.int32)
        h[1:, 0] = -(go + (rows - 1) * ge)
        f[1:, 0] = h[1:, 0]
    ramp = np.arange(n + 1, dtype=np.int64) * ge
    for i in range(1, m + 1):
        f[i, 1:] = np.maximum(h[i - 1, 1:] - go, f[i - 1, 1:] - ge)
        g = np.maximum(h[i - 1, :-1] + sub[i - 1], f[i, 1:])
        if local:
            g = np.maximum(g, 0)
        # E[j] = max_{k<j} (H[k] + ge*k) - go - ge*(j-1); opening from an E cell never beats extending it.
        origin = np.empty(n + 1, dtype=np.int64)
        origin[0] = int(h[i, 0])
        origin[1:] = g
        best = np.maximum.accumulate(origin + ramp)[:-1]
        e_row = best - go - ramp[:-1]
        e[i, 1:] = np.maximum(e_row, _NEG).astype(np.int32)
        h[i, 1:] = np.maximum(g, e[i, 1:])
    return h, e, f


def _traceback(
    sub: npt.NDArray[np.int32],
    h: npt.NDArray[np.int32],
    e: npt.NDArray[np.int32],
    f: npt.NDArray[np.int32],
    scoring: Scoring,
) -> Cigar:
    """Global path from ``(m, n)`` to ``(0, 0)``: diagonal first; a gap is extended on a tie."""
    ge = scoring.gap_extend
    i, j = sub.shape
    state = 0  # 0: H, 1: E (D op, consumes target), 2: F (I op, consumes query)
    ops: list[int] = []
    while i > 0 or j > 0:
        if state == 0:
            if i > 0 and j > 0 and h[i, j] == h[i - 1, j - 1] + sub[i - 1, j - 1]:
                ops.append(OP_M)
                i -= 1
                j -= 1
                continue
            state = 1 if j > 0 and (h[i, j] == e[i, j] or i == 0) else 2
        if state == 1:
            ops.append(OP_D)
            state = 1 if e[i, j] == e[i, j - 1] - ge else 0
            j -= 1
        else:
            ops.append(OP_I)
            state = 2 if f[i, j] == f[i - 1, j] - ge else 0
            i -= 1
    return merge_cigar((op, 1) for op in reversed(ops))


def _first_best(h: npt.NDArray[np.int32], score: int) -> tuple[int, int]:
    """The cell (row, column) holding ``score`` with the smallest column, then the smallest row."""
    cols = np.flatnonzero((h == score).any(axis=0))
    col = int(cols[0])
    row = int(np.flatnonzero(h[:, col] == score)[0])
    return row, col


def local_align(query: str, target: str, scoring: Scoring | None = None) -> LocalAlignment:
    """Best local alignment of ``query`` inside ``target`` (score 0 and empty CIGAR when none)."""
    scoring = scoring or Scoring()
    if not query or not target:
        return LocalAlignment(0, 0, [])
    sub = _substitution(query, target, scoring)
    h, _, _ = _fill(sub, scoring, local=True)
    score = int(h.max())
    if score <= 0:
        return LocalAlignment(0, 0, [])
    q_end, t_end = _first_best(h, score)  # 1-based ends (exclusive in 0-based terms)
    # The begin: the shortest alignment ending there, from the reversed prefixes.
    rq, rt = query[:q_end][::-1], target[:t_end][::-1]
    rsub = _substitution(rq, rt, scoring)
    rh, _, _ = _fill(rsub, scoring, local=True)
    q_len, t_len = _first_best(rh, score)
    q_begin, t_begin = q_end - q_len, t_end - t_len
    scores = (scoring.match, scoring.mismatch, scoring.gap_open, scoring.gap_extend)
    cigar = banded_cigar(query[q_begin:q_end], target[t_begin:t_end], score, scores)
    if cigar is None:
        gsub = sub[q_begin:q_end, t_begin:t_end]
        gh, ge_, gf = _fill(gsub, scoring, local=False)
        cigar = _traceback(gsub, gh, ge_, gf, scoring)
    if q_begin:
        cigar.insert(0, (OP_S, q_begin))
    if q_end < len(query):
        cigar.append((OP_S, len(query) - q_end))
    return LocalAlignment(score, t_begin, cigar)


def local_scores(query: str, targets: list[str], scoring: Scoring | None = None) -> list[tuple[int, int]]:
    """(best local alignment score, smallest target end column holding it) of ``query`` against
    each of ``targets``, in one batched fill. The end (exclusive) lets ``local_align`` work on
    ``target[end - 3 * len(query) : end]`` only."""
    scoring = scoring or Scoring()
    if not query or not targets:
        return [(0, 0)] * len(targets)
    n = max(len(t) for t in targets)
    pad = ord("#")  # never matches: scores -mismatch, so no best cell lies in the padding
    codes = np.full((len(targets), n), pad, dtype=np.uint8)
    for b, t in enumerate(targets):
        codes[b, : len(t)] = _codes(t)
    q = _codes(query)
    nn = ord("N")
    go, ge = scoring.gap_open, scoring.gap_extend
    width = n + 1
    h_prev = np.zeros((len(targets), width), dtype=np.int64)
    f = np.full((len(targets), n), -(10**8), dtype=np.int64)
    ramp = np.arange(width, dtype=np.int64) * ge
    best = np.zeros(len(targets), dtype=np.int64)
    best_col = np.zeros(len(targets), dtype=np.int64)
    n_target = codes == nn
    for i in range(len(q)):
        base = q[i]
        sub = np.where(codes == base, scoring.match, -scoring.mismatch)
        if base == nn:
            sub[:] = 0
        else:
            sub[n_target] = 0
        f = np.maximum(h_prev[:, 1:] - go, f - ge)
        g = np.maximum(np.maximum(h_prev[:, :-1] + sub, f), 0)
        origin = np.zeros((len(targets), width), dtype=np.int64)
        origin[:, 1:] = g
        e = np.maximum.accumulate(origin + ramp, axis=1)[:, :-1] - go - ramp[:-1]
        h = np.zeros((len(targets), width), dtype=np.int64)
        h[:, 1:] = np.maximum(g, e)
        row_best = h.max(axis=1)
        row_col = h.argmax(axis=1)
        better = row_best > best
        tie = (row_best == best) & (row_best > 0)
        best_col = np.where(better, row_col, np.where(tie, np.minimum(best_col, row_col), best_col))
        best = np.maximum(best, row_best)
        h_prev = h
    return [(int(s), int(c)) for s, c in zip(best, best_col, strict=True)]


def _ends(query: str, target: str) -> tuple[int, int]:
    """Identical prefix and suffix lengths that do not overlap; the prefix gives way to the suffix,
    so an indel in a repeat is left at its leftmost position."""
    shortest = min(len(query), len(target))
    suffix = 0
    while suffix < shortest and query[-1 - suffix] == target[-1 - suffix]:
        suffix += 1
    prefix = 0
    while prefix < shortest - suffix and query[prefix] == target[prefix]:
        prefix += 1
    return prefix, suffix


def _global_between_ends(query: str, target: str, scoring: Scoring, margin: int) -> Cigar:
    """Global alignment of two similar sequences: identical ends matched directly, the middle
    (with ``margin`` bases either side) by dynamic programming. The traceback pushes gaps in a
    repeat to its left end; when a gap reaches the left edge of the aligned stretch (a repeat
    longer than the margin, e.g. a homopolymer), the margin is doubled until it does not or the
    stretch starts at the sequences' start. (Splitting long middles at shared unique 16-mers was
    tried: it changes 5 of the 84 golden pileups, so it is not done.)"""
    prefix, suffix = _ends(query, target)
    q_mid, t_mid = len(query) - prefix - suffix, len(target) - prefix - suffix
    if q_mid == 0 or t_mid == 0:
        gap = (OP_I, q_mid) if q_mid else (OP_D, t_mid)
        return merge_cigar([(OP_M, prefix), gap, (OP_M, suffix)])
    while True:
        lo = max(0, prefix - margin)
        tail = max(0, suffix - margin)
        sub = _substitution(query[lo : len(query) - tail], target[lo : len(target) - tail], scoring)
        h, e, f = _fill(sub, scoring, local=False)
        middle = _traceback(sub, h, e, f, scoring)
        if lo == 0 or middle[0][0] == OP_M:
            return merge_cigar([(OP_M, lo), *middle, (OP_M, tail)])
        margin *= 2


def _cigar_score(query: str, target: str, cigar: Cigar, scoring: Scoring) -> int:
    score, qi, ti = 0, 0, 0
    for op, length in cigar:
        if op == OP_M:
            sub = _substitution(query[qi : qi + length], target[ti : ti + length], scoring)
            score += int(np.trace(sub)) if length else 0
            qi += length
            ti += length
        else:
            score -= scoring.gap_open + (length - 1) * scoring.gap_extend
            if op == OP_I:
                qi += length
            else:
                ti += length
    return score


def align_similar(query: str, target: str, scoring: Scoring | None = None, margin: int = 10) -> LocalAlignment:
    """``local_align`` for two sequences sharing long identical ends (a haplotype and its reference):
    the identical prefix and suffix (not overlapping each other) are matched directly and only the
    middle, with ``margin`` bases either side, is aligned. Falls back to the full alignment when the
    middle alignment does not reach both ends."""
    scoring = scoring or Scoring()
    prefix, suffix = _ends(query, target)
    if prefix < margin or suffix < margin:
        return local_align(query, target, scoring)
    cigar = _global_between_ends(query, target, scoring, margin)
    if cigar[0][0] != OP_M or cigar[-1][0] != OP_M:
        return local_align(query, target, scoring)
    score = _cigar_score(query, target, cigar, scoring)
    scores = (scoring.match, scoring.mismatch, scoring.gap_open, scoring.gap_extend)
    banded = banded_cigar(query, target, score, scores)
    return LocalAlignment(score, 0, banded if banded is not None else cigar)

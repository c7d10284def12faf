"""The CIGAR step of the Striped Smith-Waterman library, as DeepVariant's realigner gets it.

SSW finds an alignment's score and both ends first (``realign_sw.local_align``); the CIGAR between
those ends then comes from a banded dynamic programme (``banded_sw`` in ssw.c), whose rules decide
where gaps go when several placements score the same:

- the band starts at ``|len(target) - len(query)| + 1`` diagonals either side of the main one and
  doubles until the best cell in it reaches the alignment's score; cells outside the band count 0;
- scores are local (a cell is never below 0; gaps entering a cell are clamped at 0), with a gap of
  length g costing ``gap_open + (g - 1) * gap_extend``; a gap is opened only when that is strictly
  better than extending one;
- a cell takes the diagonal when it scores at least as much as the best gap, else the gap that is
  strictly better, a deletion on a tie;
- the traceback starts at the last query and target bases and follows those choices until the
  query's first base, which is always a match.

Arrays: one row per query base, full target width (``int8`` directions), filled row by row with
numpy over the band.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from genoserve.variants.reads import OP_D, OP_I, OP_M, merge_cigar

# Direction codes (as ssw.c stores them): 1 diagonal, 2/3 query gap extended/opened (I),
# 4/5 target gap extended/opened (D).
_DIAG, _I_EXT, _I_OPEN, _D_EXT, _D_OPEN = 1, 2, 3, 4, 5


def _substitutions(
    query: npt.NDArray[np.uint8], target: npt.NDArray[np.uint8], match: int, mismatch: int
) -> npt.NDArray[np.int64]:
    """Score of each (query base, target base) pair: [m, n]; N on either side scores 0."""
    sub = np.where(query[:, None] == target[None, :], match, -mismatch).astype(np.int64)
    sub[:, target == ord("N")] = 0
    sub[query == ord("N"), :] = 0
    return sub


def _fill(
    query: npt.NDArray[np.uint8],
    target: npt.NDArray[np.uint8],
    band: int,
    scores: tuple[int, int, int, int],
) -> tuple[int, npt.NDArray[np.int8]]:
    """Best cell score in the band and the directions ``(3, m, n)``: [0] query-gap state,
    [1] target-gap state, [2] main state. Row by row over the band with slices (the per-row numpy
    calls are what this costs, so each row makes as few as it can)."""
    match, mismatch, go, ge = scores
    m, n = len(query), len(target)
    dirs = np.zeros((3, m, n), dtype=np.int8)
    sub = _substitutions(query, target, match, mismatch)
    # The previous row's H and E over every column, 0 outside its band (cells outside count 0);
    # one spare 0 on the left stands for "column -1".
    h_prev = np.zeros(n + 1, dtype=np.int64)
    e_prev = np.zeros(n + 1, dtype=np.int64)
    steps = ge * np.arange(n + 1, dtype=np.int64)
    best = 0
    for i in range(m):
        lo, hi = max(0, i - band), min(n - 1, i + band)
        if lo > hi:
            h_prev[:] = 0
            e_prev[:] = 0
            continue
        width = hi - lo + 1
        # Query gap (I) entering each cell from the row above.
        if i == 0:
            e = np.full(width, -ge, dtype=np.int64)
            de: npt.NDArray[np.int64] | int = _I_EXT
        else:
            opened, extended = h_prev[lo + 1 : hi + 2] - go, e_prev[lo + 1 : hi + 2] - ge
            e = np.maximum(opened, extended)
            de = np.where(opened > extended, _I_OPEN, _I_EXT)
        e1 = np.maximum(e, 0)
        diag = h_prev[lo : hi + 1] + sub[i, lo : hi + 1]  # h_prev[lo] is column lo - 1
        g = np.maximum(e1, diag)  # the cell without target gaps
        # Target gap (D) run along the row: F[j] = max(f chain from 0, max_k<j G[k] - go - ge*(j-1-k)).
        k = steps[: width + 1]  # ge * k; k = 0 stands for the cell left of the band (0)
        origin = np.empty(width + 1, dtype=np.int64)
        origin[0] = 0
        np.add(g, k[1:], out=origin[1:])
        run = np.maximum.accumulate(origin)[:-1]
        f = np.maximum(run - go - (k[1:] - ge), -k[1:])
        f1 = np.maximum(f, 0)
        h = np.maximum(g, f1)
        # D opened (from H) or extended (from F) entering column j from column j - 1; the cell
        # left of the band has H = F = 0.
        h_left = np.empty(width, dtype=np.int64)
        f_left = np.empty(width, dtype=np.int64)
        h_left[0] = f_left[0] = 0
        h_left[1:] = h[:-1]
        f_left[1:] = f[:-1]
        df = np.where(h_left - go > f_left - ge, _D_OPEN, _D_EXT)
        gap = np.maximum(e1, f1)
        dirs[0, i, lo : hi + 1] = de
        dirs[1, i, lo : hi + 1] = df
        dirs[2, i, lo : hi + 1] = np.where(gap <= diag, _DIAG, np.where(e1 > f1, de, df))
        best = max(best, int(h.max()))
        if lo > 0:
            h_prev[lo] = 0  # column lo - 1 leaves the band
            e_prev[lo] = 0
        h_prev[lo + 1 : hi + 2] = h
        e_prev[lo + 1 : hi + 2] = e
    return best, dirs


def banded_cigar(
    query: str, target: str, score: int, scores: tuple[int, int, int, int]
) -> list[tuple[int, int]] | None:
    """The CIGAR (pysam codes; M for matches and mismatches) SSW reports for ``query`` aligned to
    ``target`` end to end with alignment score ``score``; ``scores`` are (match, mismatch,
    gap_open, gap_extend). None when the traceback leaves the target (not expected for ends SSW
    found)."""
    if not query or not target:
        return None
    q = np.frombuffer(query.encode(), dtype=np.uint8)
    t = np.frombuffer(target.encode(), dtype=np.uint8)
    band = abs(len(t) - len(q)) + 1
    while True:
        best, dirs = _fill(q, t, band, scores)
        if best >= score or band > len(q) + len(t):
            break
        band *= 2
    i, j, state = len(q) - 1, len(t) - 1, 2
    ops: list[int] = []
    while i > 0:
        if j < 0:
            return None
        step = int(dirs[state, i, j])
        if step == _DIAG:
            ops.append(OP_M)
            i, j, state = i - 1, j - 1, 2
        elif step in (_I_EXT, _I_OPEN):
            ops.append(OP_I)
            i, state = i - 1, (0 if step == _I_EXT else 2)
        elif step in (_D_EXT, _D_OPEN):
            ops.append(OP_D)
            j, state = j - 1, (1 if step == _D_EXT else 2)
        else:
            return None
    ops.append(OP_M)
    return merge_cigar((op, 1) for op in reversed(ops))

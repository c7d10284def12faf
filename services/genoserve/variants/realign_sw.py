"""Smith-Waterman alignment with affine gaps, by the Striped Smith-Waterman library (SSW).

DeepVariant's realigner aligns reads to haplotypes and haplotypes to the reference with SSW
(``ssw_cpp``'s ``Aligner``); this module calls the same C library through ``ssw-py``, so scores,
ends, begins and CIGARs are SSW's own, ties included:

- the best cell with the smallest target end (then the smallest query end) gives the score;
- the begin is the shortest alignment reaching that score (SSW's reverse pass);
- the CIGAR between those ends is SSW's banded traceback (a band of ``|length difference| + 1``
  diagonals, doubled until it holds the score; the diagonal wins ties, so gaps in repeats end up
  left-aligned).

Scores follow DeepVariant's realigner defaults (``aln_match`` 4, ``aln_mismatch`` 6,
``aln_gap_open`` 8, ``aln_gap_extend`` 2: a gap of length g costs ``8 + (g - 1) * 2``). Bases
other than A, C, G and T (either case) are SSW's N, which scores 0 against anything, as in
``ssw_cpp``'s default matrix and base translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import ssw  # type: ignore[import-untyped]

from genoserve.variants.reads import OP_D, OP_I, OP_M, OP_S

Cigar = list[tuple[int, int]]

_OPS = {"M": OP_M, "I": OP_I, "D": OP_D}


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
    cigar: Cigar  # pysam op codes; M for both matches and mismatches; unaligned query ends as S


class QueryAligner:
    """One query (its SSW profile built once) aligned locally to any number of targets."""

    def __init__(self, query: str, scoring: Scoring | None = None) -> None:
        self.query = query
        self.scoring = scoring or Scoring()
        self._manager = ssw.AlignmentMgr(match_score=self.scoring.match, mismatch_penalty=self.scoring.mismatch)
        if query:
            self._manager.set_read(query)

    def align(self, target: str) -> LocalAlignment:
        """Best local alignment of the query inside ``target`` (score 0 and an empty CIGAR when
        none scores above 0)."""
        if not self.query or not target:
            return LocalAlignment(0, 0, [])
        self._manager.set_reference(target)
        try:
            found = self._manager.align(gap_open=self.scoring.gap_open, gap_extension=self.scoring.gap_extend)
        except ValueError:  # SSW's banded traceback gave up (ssw_align returned NULL)
            return LocalAlignment(0, 0, [])
        if found.optimal_score <= 0:
            return LocalAlignment(0, 0, [])
        cigar: Cigar = [(_OPS[op], length) for length, op in found.cigar_pair_list]
        if found.read_start > 0:
            cigar.insert(0, (OP_S, found.read_start))
        if found.read_end < len(self.query) - 1:
            cigar.append((OP_S, len(self.query) - 1 - found.read_end))
        return LocalAlignment(int(found.optimal_score), int(found.reference_start), cigar)


def local_align(query: str, target: str, scoring: Scoring | None = None) -> LocalAlignment:
    """Best local alignment of ``query`` inside ``target`` (score 0 and empty CIGAR when none)."""
    return QueryAligner(query, scoring).align(target)

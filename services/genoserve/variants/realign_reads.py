"""Aligning reads to candidate haplotypes and projecting them back onto the reference.

The steps of DeepVariant's FastPassAligner (deepvariant/realigner/fast_pass_aligner.cc, r1.9),
written here from its description:

1. every read longer than ``kmer_size`` (32) is indexed by its 32-mers; each haplotype is scanned
   for them, and a read placed ungapped where it differs from the haplotype at most
   ``max_num_of_mismatches`` (2) times (N matches anything) scores ``4 * matches - 6 * mismatches``;
   a non-reference haplotype is dropped when, at a position (outside the reference flanks) whose
   32-mer some read holds, no read placed so far covers it;
2. reads placed on no haplotype are aligned to every supported haplotype by Smith-Waterman
   (``genoserve.variants.realign_sw``: the SSW library, as DeepVariant); haplotypes are aligned
   to the reference the same way;
3. each read takes its best haplotype (haplotypes ordered by total read score, fewest first; a
   tie goes to a non-reference haplotype), and its read->haplotype and haplotype->reference
   CIGARs are merged into a read->reference alignment. An alignment whose indels could shift
   left is not normalised and the read keeps its original alignment.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from genoserve.variants.reads import OP_D, OP_I, OP_M, OP_S, Read, with_alignment
from genoserve.variants.realign_sw import Cigar, LocalAlignment, QueryAligner, Scoring

KMER_SIZE = 32
MAX_MISMATCHES = 2
NOT_ALIGNED = -1


@dataclass
class _Placement:
    score: int = 0
    position: int = NOT_ALIGNED
    cigar: Cigar = field(default_factory=list)


@dataclass
class _Haplotype:
    index: int
    score: int
    reads: list[_Placement]
    is_reference: bool = False
    ref_pos: int = 0
    cigar: Cigar = field(default_factory=list)
    to_ref_shift: list[int] = field(default_factory=list)


def _fast_scores(
    hap: str, reads: list[str], read_ids: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Scores ``4 * matches - 6 * mismatches`` (0 beyond MAX_MISMATCHES) and mismatch counts of
    ungapped placements of ``reads[read_ids]`` at ``starts`` of ``hap``; N matches anything."""
    n_code = ord("N")
    hap_codes = np.frombuffer(hap.encode(), dtype=np.uint8)
    scores = np.zeros(len(read_ids), dtype=np.int64)
    mismatches = np.zeros(len(read_ids), dtype=np.int64)
    by_size: dict[int, list[int]] = defaultdict(list)
    for row, read_id in enumerate(read_ids.tolist()):
        by_size[len(reads[read_id])].append(row)
    for size, rows_list in by_size.items():
        rows = np.asarray(rows_list, dtype=np.int64)
        ids = read_ids[rows]
        read_codes = np.stack([np.frombuffer(reads[i].encode(), dtype=np.uint8) for i in ids.tolist()])
        windows = hap_codes[starts[rows][:, None] + np.arange(size)]
        differ = (windows != read_codes) & (windows != n_code) & (read_codes != n_code)
        miss = differ.sum(axis=1)
        mismatches[rows] = miss
        scores[rows] = np.where(miss <= MAX_MISMATCHES, (size - miss) * 4 - miss * 6, 0)
    return scores, mismatches


def _index(reads: list[str]) -> dict[str, npt.NDArray[np.int64]]:
    """32-mer -> ``(n, 2)`` array of (read id, offset in read), by read then offset."""
    lists: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for read_id, seq in enumerate(reads):
        if len(seq) <= KMER_SIZE:
            continue
        for pos in range(len(seq) - KMER_SIZE + 1):
            lists[seq[pos : pos + KMER_SIZE]].append((read_id, pos))
    return {k: np.asarray(v, dtype=np.int64) for k, v in lists.items()}


def _fast_align(
    hap: str, is_ref: bool, reads: list[str], index: dict[str, npt.NDArray[np.int64]], prefix: int, suffix: int
) -> tuple[int, list[_Placement]]:
    """Ungapped placements of ``reads`` on ``hap`` found through shared 32-mers.

    Equivalent to scanning the haplotype's k-mers in order (FastAlignReadsToHaplotype): a read
    keeps its best-scoring placement (the first found among equals), and a non-reference haplotype
    is discarded (score 0) when, at a position ``i`` in ``[prefix, len - suffix)`` whose k-mer some
    read holds, no accepted placement found so far covers ``i``; positions whose k-mer no read holds
    are never checked (the scan skips them). A placement found at k-mer ``i`` covers ``[i, start + size)``.
    """
    placements = [_Placement() for _ in reads]
    at: list[int] = []
    occurrences: list[npt.NDArray[np.int64]] = []
    for i in range(len(hap) - KMER_SIZE + 1):
        occ = index.get(hap[i : i + KMER_SIZE])
        if occ is not None:
            at.append(i)
            occurrences.append(occ)
    if not occurrences:
        return 0, placements
    occ_all = np.concatenate(occurrences)
    found_i = np.repeat(np.asarray(at, dtype=np.int64), [len(o) for o in occurrences])  # scan order
    read_ids, offsets = occ_all[:, 0], occ_all[:, 1]
    sizes = np.asarray([len(r) for r in reads], dtype=np.int64)
    starts = np.maximum(0, found_i - offsets)
    fits = starts + sizes[read_ids] <= len(hap)
    found_i, read_ids, starts = found_i[fits], read_ids[fits], starts[fits]
    _, first = np.unique(read_ids * (len(hap) + 1) + starts, return_index=True)
    first.sort()  # discovery order
    found_i, read_ids, starts = found_i[first], read_ids[first], starts[first]
    scores, mismatches = _fast_scores(hap, reads, read_ids, starts)
    ok = mismatches <= MAX_MISMATCHES
    covered = np.zeros(len(hap) + 1, dtype=np.int64)
    np.add.at(covered, found_i[ok], 1)
    np.add.at(covered, starts[ok] + sizes[read_ids[ok]], -1)
    accepted = list(zip(read_ids[ok].tolist(), starts[ok].tolist(), scores[ok].tolist(), strict=True))
    if not is_ref:
        # Checked only where the haplotype's k-mer occurs in some read (the scan skips the rest).
        checked = np.asarray(at, dtype=np.int64)
        checked = checked[(checked >= prefix) & (checked < len(hap) - suffix)]
        if (np.cumsum(covered)[checked] == 0).any():
            return 0, placements
    total = 0
    for read_id, start, score in accepted:
        placement = placements[read_id]
        if placement.score < score:
            total += score - placement.score
            placement.score, placement.position = score, start
            placement.cigar = [(OP_M, len(reads[read_id]))]
    return total, placements


def _shift_map(size: int, cigar: Cigar) -> list[int]:
    """Per haplotype position, the offset to add to reach its reference position."""
    shifts = [0] * size
    shift = 0
    pos = 0
    for op, length in cigar:
        if op == OP_M:
            shifts[pos : pos + length] = [shift] * length
            pos += length
        elif op == OP_S:
            shift -= length
            shifts[pos : pos + length] = [shift] * length
            pos += length
        elif op == OP_D:
            shift += length
        elif op == OP_I:
            for _ in range(length):
                shifts[pos] = shift
                shift -= 1
                pos += 1
    return shifts


def _aligned_length(cigar: Cigar) -> int:
    return sum(n for op, n in cigar if op != OP_D)


def _merge(op: int, length: int, read_len: int, cigar: list[list[int]]) -> None:
    """Append ``op`` to ``cigar`` (FastPassAligner's MergeCigarOp); an I after a D (or a D after
    an I) cancels one base of each into a match."""
    last = cigar[-1][0] if cigar else None
    before = sum(n for o, n in cigar if o != OP_D)
    new_length = length if op == OP_D else min(length, read_len - before)
    if new_length <= 0 or before == read_len:
        return
    if (op == OP_I and last == OP_D) or (op == OP_D and last == OP_I):
        prev = len(cigar) - 2 if len(cigar) > 1 else len(cigar) - 1
        if cigar[prev][0] != OP_M:
            cigar.insert(len(cigar) - 1, [OP_M, 1])
        else:
            cigar[prev][1] += 1
        if cigar[-1][1] == 1:
            cigar.pop()
        else:
            cigar[-1][1] -= 1
    elif op == last:
        cigar[-1][1] += new_length
    else:
        cigar.append([op, new_length])


def _merge_run(op: int, length: int, read_len: int, cigar: list[list[int]]) -> None:
    """``_merge(op, 1, ...)`` ``length`` times: one base at a time while each cancels against
    an opposite indel, the rest at once."""
    while length > 0 and cigar and {op, cigar[-1][0]} == {OP_I, OP_D}:
        _merge(op, 1, read_len, cigar)
        length -= 1
    if length > 0:
        _merge(op, length, read_len, cigar)


def _left_trim(hap_cigar: Cigar, position: int) -> list[list[int]]:
    ops = [[op, n] for op, n in hap_cigar]
    cur = 0
    while cur != position:
        op, n = ops.pop(0)
        if op in (OP_M, OP_S, OP_I):
            if n + cur > position:
                ops.insert(0, [op, n - (position - cur)])
            cur = min(n + cur, position)
    if ops and ops[0][0] == OP_D:
        ops.pop(0)
    return ops


_PRIORITY = (OP_S, OP_D, OP_I, OP_M)


def read_to_reference_cigar(read_len: int, placement: _Placement, hap_cigar: Cigar) -> Cigar:
    """Compose read->haplotype and haplotype->reference alignments (CalculateReadToRefAlignment)."""
    read_ops = [[op, n] for op, n in placement.cigar]
    hap_ops = _left_trim(hap_cigar, placement.position)
    out: list[list[int]] = []
    if read_ops and read_ops[0][0] == OP_S:
        _merge(OP_S, read_ops[0][1], read_len, out)
        read_ops.pop(0)
    cur_r = [0, 0]
    cur_h = [0, 0]
    while (read_ops or hap_ops) and _aligned_length([(o, n) for o, n in out]) < read_len:
        if read_ops and not hap_ops and cur_h[1] == 0:
            op, n = read_ops.pop(0)
            _merge(op, n, read_len, out)
            continue
        if not read_ops and cur_r[1] == 0 and hap_ops:
            break
        if cur_r[1] == 0:
            cur_r = read_ops.pop(0)
        if cur_h[1] == 0:
            cur_h = hap_ops.pop(0)
        while cur_r[1] > 0 and cur_h[1] > 0:
            if (cur_r[0] == OP_D and cur_h[0] == OP_I) or (cur_r[0] == OP_I and cur_h[0] == OP_D):
                cur_h[1] -= 1
                cur_r[1] -= 1
                if cur_h[0] == OP_D:
                    hap_ops.insert(0, [OP_M, 1])
                    read_ops.insert(0, [OP_M, 1])
                continue
            # The op and which side advances stay the same until one side runs out: one run.
            op = next(op for op in _PRIORITY if op in (cur_r[0], cur_h[0]))
            if cur_r[0] == OP_I:
                n = cur_r[1]
                cur_r[1] = 0
            elif cur_h[0] == OP_D:
                n = cur_h[1]
                cur_h[1] = 0
            else:
                n = min(cur_r[1], cur_h[1])
                cur_r[1] -= n
                cur_h[1] -= n
            _merge_run(op, n, read_len, out)
    return [(op, n) for op, n in out]


def is_normalized(cigar: Cigar, ref_offset: int, reference: str, read_seq: str) -> bool:
    """False when an indel's last base equals the base before it (it could shift left)."""
    if ref_offset < 0:
        return True
    ref_i, read_i = ref_offset, 0
    for op, n in cigar:
        if op == OP_S:
            read_i += n
            continue
        if op != OP_M:
            if op == OP_D:
                if ref_i + n > len(reference):
                    return False
                seq = reference[ref_i : ref_i + n]
                if read_i > 0 and seq[-1] == read_seq[read_i - 1]:
                    return False
            else:
                seq = read_seq[read_i : read_i + n]
                if ref_i > 0 and seq[-1] == reference[ref_i - 1]:
                    return False
        if op != OP_I:
            ref_i += n
        if op != OP_D:
            read_i += n
    return True


@dataclass(frozen=True)
class AlignTask:
    """One assembled region: the reference around it and its haplotypes (with the same flanks)."""

    reference: str  # prefix + window reference + suffix
    ref_start: int  # contig position of reference[0]
    prefix_len: int
    suffix_len: int
    haplotypes: list[str]


def align_reads(task: AlignTask, reads: list[Read], scoring: Scoring | None = None) -> list[Read]:
    """``reads`` realigned to their best haplotype of ``task`` (a read that aligns nowhere keeps its
    alignment). Order is kept."""
    scoring = scoring or Scoring()
    seqs = [r.seq.upper() for r in reads]
    read_size = len(seqs[0]) if seqs else 0
    # Score threshold for SW placements (CalculateSswAlignmentScoreThreshold); 1 with the defaults.
    similarity = 0.16934
    threshold = scoring.match * read_size * similarity - scoring.mismatch * read_size * (1 - similarity)
    threshold = threshold if threshold >= 0 else 1
    index = _index(seqs)
    haps: list[_Haplotype] = []
    for i, hap in enumerate(task.haplotypes):
        score, placements = _fast_align(hap, hap == task.reference, seqs, index, task.prefix_len, task.suffix_len)
        haps.append(_Haplotype(i, score, placements))
    for h in haps:
        hap = task.haplotypes[h.index]
        if hap == task.reference:
            h.is_reference, h.cigar, h.ref_pos = True, [(OP_M, len(hap))], 0
        else:
            aln = QueryAligner(hap, scoring).align(task.reference)
            if aln.score > 0:
                h.cigar, h.ref_pos = aln.cigar, aln.target_begin
                h.is_reference = (
                    aln.cigar == [(OP_M, len(hap))]
                    and hap == task.reference[aln.target_begin : aln.target_begin + len(hap)]
                )
        h.to_ref_shift = _shift_map(len(hap), h.cigar)
    # Reads placed on no haplotype: Smith-Waterman against every supported haplotype; the read
    # takes the alignment to its best one.
    supported = [h for h in haps if h.score != 0]
    sw_alignments: dict[int, dict[int, LocalAlignment]] = {}
    for r, seq in enumerate(seqs):
        if any(h.reads[r].score > 0 for h in haps) or not supported:
            continue
        aligner = QueryAligner(seq, scoring)
        found = {h.index: aligner.align(task.haplotypes[h.index]) for h in supported}
        sw_alignments[r] = {i: aln for i, aln in found.items() if aln.score > 0 and aln.score >= threshold}
    ordered = sorted(haps, key=lambda h: h.score)
    out: list[Read] = []
    for r, read in enumerate(reads):
        best: _Haplotype | None = None
        best_score = 0
        for h in ordered:
            if r in sw_alignments:
                to_hap = sw_alignments[r].get(h.index)
                s = to_hap.score if to_hap is not None else 0
            else:
                s = h.reads[r].score
            if s > best_score or (best_score > 0 and s == best_score and not h.is_reference):
                best, best_score = h, s
        if best is None or not best.cigar:
            out.append(read)
            continue
        if r in sw_alignments:
            chosen = sw_alignments[r][best.index]
            best.reads[r] = _Placement(chosen.score, chosen.target_begin, chosen.cigar)
        placement = best.reads[r]
        if placement.position >= len(best.to_ref_shift):
            out.append(read)
            continue
        offset = best.ref_pos + placement.position + best.to_ref_shift[placement.position]
        cigar = read_to_reference_cigar(len(seqs[r]), placement, best.cigar)
        if not cigar or not is_normalized(cigar, offset, task.reference, seqs[r]):
            out.append(read)
            continue
        out.append(with_alignment(read, task.ref_start + offset, cigar))
    return out

"""Where to assemble: DeepVariant's window selector (VARIANT_READS model).

From deepvariant/realigner/window_selector.{py,cc} (r1.9) and the options recorded in DeepVariant
1.9's golden ``run_info`` (``ws_config``): reads with mapping quality >= 20 are counted over the
region expanded by 20 bp. Each read allele adds to a per-position count:

- a substitution at its position;
- an insertion or soft clip of L bases anchored at ``p`` over ``[p + 1 - L, p + 1 + L)``;
- a deletion of L bases anchored at ``p`` over ``[p + 1, p + 1 + L)``.

(DeepVariant 1.9's allele counter keeps low-quality alleles, flagging them, and the window selector
skips the flagged ones, as the counter used to drop them: a substitution whose base quality is
below ``ws_min_base_quality`` (20), and an insertion or soft clip whose bases' mean quality is below
it; deletions are never low quality. A flagged allele still takes its read's slot at its position.)
An allele counts only where at least ``min_allele_support`` (2, the ``ws_config`` value in the
golden run_info) reads show it: same position, kind and bases, so a lone read's sequencing error or
soft clip opens no window. Positions counted by 2 to 300 reads are candidates; candidates within
2 * 80 bp of each other merge, and each group gives the window ``[first - 80, last + 80)``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from genoserve.variants.candidates import CANONICAL
from genoserve.variants.reads import MATCH_OPS, OP_D, OP_I, OP_N, OP_S, Read

SUBSTITUTION, INSERTION, DELETION, SOFT_CLIP = range(4)


@dataclass(frozen=True)
class WindowOptions:
    min_mapq: int = 20
    min_base_quality: int = 20
    min_windows_distance: int = 80
    max_window_size: int = 1000
    region_expansion_in_bp: int = 20
    min_num_supporting_reads: int = 2
    max_num_supporting_reads: int = 300
    min_allele_support: int = 2


def read_alleles(read: Read, ref: str, ref_offset: int, min_base_quality: int = 0) -> list[tuple[int, int, int, str]]:
    """(anchor position, kind, length, bases) of each non-reference allele the allele counter gives
    ``read``, low-quality ones (see the module docstring) left out. ``bases`` are the allele's as
    the counter writes them: the read base of a substitution; the base before an indel or clip
    (the read's, or the reference's at the read start) then the inserted, clipped or deleted bases.

    Reference alleles are kept out of the result but still take part in the rule that an indel or
    clip anchored at a base replaces that base's allele; so do low-quality alleles.
    """
    # A reference base adds no event: it is never reported, and it supersedes nothing (the event
    # before it lies at a smaller position than any after it). bool: low quality.
    events: list[tuple[int, int, int, str, bool]] = []
    ref_i, read_i = read.start, 0
    seq, quals = read.seq, read.quals
    for op, length in read.cigar:
        if op in MATCH_OPS:
            read_part = seq[read_i : read_i + length]
            ref_part = _ref_span(ref, ref_i - ref_offset, length)
            if read_part != ref_part:
                for k, (base, ref_base) in enumerate(zip(read_part, ref_part, strict=True)):
                    if base != ref_base and base in CANONICAL:
                        low = int(quals[read_i + k]) < min_base_quality
                        events.append((ref_i + k, SUBSTITUTION, 1, base, low))
            ref_i += length
            read_i += length
        elif op in (OP_I, OP_S):
            prev = seq[read_i - 1] if read_i > 0 else _ref_base(ref, ref_i - 1 - ref_offset)
            bases = seq[read_i : read_i + length]
            if prev in CANONICAL and set(bases) <= CANONICAL:
                low = int(quals[read_i : read_i + length].sum()) < min_base_quality * length
                events.append((ref_i - 1, INSERTION if op == OP_I else SOFT_CLIP, length, prev + bases, low))
            else:
                events.append((-(10**12), -2, 0, "", False))
            read_i += length
        elif op == OP_D:
            prev = seq[read_i - 1] if read_i > 0 else _ref_base(ref, ref_i - 1 - ref_offset)
            span = ref[ref_i - ref_offset : ref_i + length - ref_offset] if ref_i >= ref_offset else ""
            if prev in CANONICAL and len(span) == length and set(span) <= CANONICAL:
                events.append((ref_i - 1, DELETION, length, prev + span, False))
            else:
                events.append((-(10**12), -2, 0, "", False))
            ref_i += length
        elif op == OP_N:
            ref_i += length
    out: list[tuple[int, int, int, str]] = []
    for i, (pos, kind, length, bases, low) in enumerate(events):
        if i + 1 < len(events) and events[i + 1][0] == pos:
            continue  # a following indel/clip at the same anchor supersedes this allele
        if kind >= 0 and not low:
            out.append((pos, kind, length, bases))
    return out


def _ref_base(ref: str, i: int) -> str:
    return ref[i] if 0 <= i < len(ref) else ""


def _ref_span(ref: str, start: int, length: int) -> str:
    """``ref[start : start + length]``, N for each position outside ``ref``."""
    if start >= 0 and start + length <= len(ref):
        return ref[start : start + length]
    return "".join(ref[i] if 0 <= i < len(ref) else "N" for i in range(start, start + length))


def candidate_positions(
    reads: list[Read], ref: str, ref_offset: int, start: int, end: int, options: WindowOptions
) -> list[int]:
    """Positions in ``[start, end)`` (the expanded region) supported by enough variant reads."""
    alleles: dict[tuple[int, int, int, str], int] = defaultdict(int)  # (pos, kind, length, bases) -> reads
    for read in reads:
        if read.mapping_quality < options.min_mapq:
            continue
        seen: dict[int, tuple[int, int, str]] = {}
        for pos, kind, length, bases in read_alleles(read, ref, ref_offset, options.min_base_quality):
            if start <= pos < end:
                seen[pos] = (kind, length, bases)  # one allele per read and position
        for pos, (kind, length, bases) in seen.items():
            alleles[(pos, kind, length, bases)] += 1
    counts = np.zeros(max(0, end - start), dtype=np.int64)
    for (pos, kind, length, _), n in alleles.items():
        if n < options.min_allele_support:
            continue
        i = pos - start
        if kind == SUBSTITUTION:
            lo, hi = i, i + 1
        elif kind == DELETION:
            lo, hi = i + 1, i + 1 + length
        else:
            lo, hi = i + 1 - length, i + 1 + length
        counts[max(lo, 0) : max(min(hi, len(counts)), 0)] += n
    keep = (counts >= options.min_num_supporting_reads) & (counts <= options.max_num_supporting_reads)
    return [start + int(i) for i in np.flatnonzero(keep)]


def windows_from_positions(positions: list[int], options: WindowOptions) -> list[tuple[int, int]]:
    """Group candidate positions into assembly windows ``[first - d, last + d)``."""
    d = options.min_windows_distance
    windows: list[tuple[int, int]] = []
    first = last = None
    for pos in sorted(positions):
        if first is None or last is None:
            first = last = pos
        elif pos > last + 2 * d:
            windows.append((first - d, last + d))
            first = last = pos
        else:
            last = pos
    if first is not None and last is not None:
        windows.append((first - d, last + d))
    return windows


def select_windows(
    reads: list[Read],
    ref: str,
    ref_offset: int,
    region_start: int,
    region_end: int,
    contig_length: int,
    options: WindowOptions | None = None,
) -> list[tuple[int, int]]:
    """Assembly windows for the reads of one region (``ref`` covers them, from ``ref_offset``)."""
    options = options or WindowOptions()
    if not reads:
        return []
    lo = max(0, region_start - options.region_expansion_in_bp)
    hi = min(contig_length, region_end + options.region_expansion_in_bp)
    return windows_from_positions(candidate_positions(reads, ref, ref_offset, lo, hi, options), options)

"""Local realignment of the reads of one region, as DeepVariant's make_examples does by default.

The flow of deepvariant/realigner/realigner.py (r1.9), written here in numpy/python (the
Smith-Waterman alignments by the SSW library, as in DeepVariant):

1. ``realign_windows``: windows around evidence of variation;
2. ``realign_graph``: per window (at most 1000 bp, inside the contig), candidate haplotypes from a
   de Bruijn graph of the window's reference and reads; windows whose only haplotype is the
   reference (or whose graph is too branchy) are left alone;
3. each read goes to the assembled window it overlaps most (none: it keeps its alignment);
4. ``realign_reads``: per window, the reference from ``min(read starts, window start) - 20`` to
   ``max(read ends, window end) + 20`` (``_REF_ALIGN_MARGIN``) flanks every haplotype, the reads
   are aligned to the haplotypes and projected back to reference coordinates.

Reads longer than 500 bp are not realigned (make_examples' ``max_read_length_to_realign``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genoserve.variants.reads import Read
from genoserve.variants.realign_graph import GraphOptions, candidate_haplotypes
from genoserve.variants.realign_reads import AlignTask, align_reads
from genoserve.variants.realign_sw import Scoring
from genoserve.variants.realign_windows import WindowOptions, select_windows


@dataclass(frozen=True)
class RealignerOptions:
    """DeepVariant 1.9's realigner defaults (``realigner_options`` in its golden run_info)."""

    enabled: bool = True
    windows: WindowOptions = field(default_factory=WindowOptions)
    graph: GraphOptions = field(default_factory=GraphOptions)
    scoring: Scoring = field(default_factory=Scoring)
    ref_align_margin: int = 20
    max_read_length_to_realign: int = 500


#: How far outside the region the reference passed to ``realign_region`` must reach.
REFERENCE_PAD = 2000


@dataclass
class _Assembled:
    start: int
    end: int
    haplotypes: list[str]
    reads: list[Read] = field(default_factory=list)


def _max_overlap(read: Read, regions: list[_Assembled]) -> int | None:
    best, best_overlap = None, 0
    for i, region in enumerate(regions):
        overlap = min(read.end, region.end) - max(read.start, region.start)
        if overlap > best_overlap:
            best, best_overlap = i, overlap
    return best


def realign_region(
    reads: list[Read],
    ref: str,
    ref_offset: int,
    contig_length: int,
    region_start: int,
    region_end: int,
    options: RealignerOptions | None = None,
) -> list[Read]:
    """The reads of region ``[region_start, region_end)``, realigned (same reads, new order).

    ``ref`` is the contig's reference from ``ref_offset`` on and must reach ``REFERENCE_PAD`` bases
    beyond the region on both sides (or the contig ends).
    """
    options = options or RealignerOptions()
    if not options.enabled or not reads:
        return reads
    long_reads = [r for r in reads if len(r.seq) > options.max_read_length_to_realign]
    reads = [r for r in reads if len(r.seq) <= options.max_read_length_to_realign]
    ref_end = ref_offset + len(ref)
    windows = select_windows(reads, ref, ref_offset, region_start, region_end, contig_length, options.windows)
    assembled: list[_Assembled] = []
    for start, end in windows:
        if end - start > options.windows.max_window_size or start < 0 or end > contig_length:
            continue
        if start < ref_offset or end > ref_end:
            continue
        window_ref = ref[start - ref_offset : end - ref_offset]
        window_reads = [r for r in reads if r.start < end and r.end > start]
        haplotypes = candidate_haplotypes(window_ref, window_reads, options.graph)
        if haplotypes and haplotypes != [window_ref]:
            assembled.append(_Assembled(start, end, haplotypes))
    out: list[Read] = []
    for read in reads:
        index = _max_overlap(read, assembled)
        if index is None:
            out.append(read)
        else:
            assembled[index].reads.append(read)
    margin = options.ref_align_margin
    for region in assembled:
        if not region.reads:
            continue
        lo = max(0, min(min(r.start for r in region.reads), region.start) - margin)
        hi = min(contig_length, max(max(r.end for r in region.reads), region.end) + margin)
        if hi <= region.end or lo < ref_offset or hi > ref_end:
            out.extend(region.reads)
            continue
        prefix = ref[lo - ref_offset : region.start - ref_offset]
        suffix = ref[region.end - ref_offset : hi - ref_offset]
        task = AlignTask(
            reference=ref[lo - ref_offset : hi - ref_offset],
            ref_start=lo,
            prefix_len=len(prefix),
            suffix_len=len(suffix),
            haplotypes=[prefix + h + suffix for h in region.haplotypes],
        )
        out.extend(align_reads(task, region.reads, options.scoring))
    return long_reads + out

"""BAM + reference + region -> candidates -> DeepVariant-layout ``PileupExample`` objects.

The calling-mode half of DeepVariant's make_examples: the region is cut into 1000 bp partitions
(``partition_size``); each partition's reads (those overlapping it) are realigned locally
(``genoserve.variants.realign``, on by default as in DeepVariant), counted for candidates inside
the partition, and drawn into the pileups of those candidates.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam

from genoserve.core.errors import InvalidArgument
from genoserve.variants.candidates import (
    Candidate,
    CandidateThresholds,
    alt_allele_sets,
    count_alleles,
    find_candidates,
)
from genoserve.variants.examples import CallInfo, PileupExample
from genoserve.variants.pileup import PileupEncoder, PileupOptions
from genoserve.variants.reads import Read, ReadFilter, fetch_reads, open_alignments
from genoserve.variants.realign import REFERENCE_PAD, RealignerOptions, realign_region

#: make_examples' ``read_overlap_buffer_bp``: a pileup shows reads within this many bp of the candidate.
READ_OVERLAP_BUFFER_BP = 5
#: make_examples' ``partition_size``: reads are fetched, realigned and counted per partition.
PARTITION_SIZE = 1000


@dataclass(frozen=True)
class Region:
    """0-based half-open interval on a contig."""

    contig: str
    start: int
    end: int

    @classmethod
    def parse(cls, text: str, field: str = "regions") -> Region:
        """``chr20:10000001-10010000`` (1-based inclusive, digit-grouping commas allowed)."""
        text = text.strip().replace(",", "")
        if ":" not in text:
            raise InvalidArgument.field(field, f"{text!r}: expected CONTIG:START-END (1-based, inclusive)")
        contig, _, span = text.rpartition(":")
        try:
            first, _, last = span.partition("-")
            start, end = int(first) - 1, int(last)
        except ValueError as exc:
            raise InvalidArgument.field(field, f"{text!r}: expected CONTIG:START-END with integers") from exc
        if not contig or start < 0 or end <= start:
            raise InvalidArgument.field(field, f"{text!r}: needs a contig and 1 <= START <= END")
        return cls(contig, start, end)

    def __str__(self) -> str:
        return f"{self.contig}:{self.start + 1}-{self.end}"


def sample_name(bam: pysam.AlignmentFile, default: str = "SAMPLE") -> str:
    """The SM of the BAM's first read group (DeepVariant's default sample name)."""
    groups = bam.header.to_dict().get("RG", [])
    for group in groups:
        if group.get("SM"):
            return str(group["SM"])
    return default


def reference_window(fasta: pysam.FastaFile, contig: str, start: int, width: int) -> str:
    """``width`` reference bases from ``start`` (upper case), "N" where off the contig."""
    length = fasta.get_reference_length(contig)
    lo, hi = max(0, start), min(length, start + width)
    bases = fasta.fetch(contig, lo, hi).upper() if hi > lo else ""
    return "N" * (lo - start) + bases + "N" * (start + width - hi)


def open_reference(path: str | Path, field: str = "reference") -> pysam.FastaFile:
    """Open an indexed FASTA; failures are INVALID_ARGUMENT naming the file."""
    try:
        return pysam.FastaFile(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidArgument.field(field, f"{path}: cannot open indexed FASTA: {exc}") from exc


#: Reads spanning at most this much reference are found by bisection; longer ones are always checked.
_MAX_SPAN = 2000


class _SortedReads(list[Read]):
    """All reads sorted by start; those spanning at most ``_MAX_SPAN`` are also indexed by start."""

    def __init__(self, reads: list[Read]) -> None:
        super().__init__(sorted(reads, key=lambda r: r.start))
        self.short = [r for r in self if r.end - r.start <= _MAX_SPAN]
        self.starts = [r.start for r in self.short]
        self.long = [r for r in self if r.end - r.start > _MAX_SPAN]


def _near(reads: list[Read], position: int) -> list[Read]:
    """The reads that can overlap ``position`` (all of them unless ``reads`` is a _SortedReads)."""
    if not isinstance(reads, _SortedReads):
        return reads
    lo = bisect.bisect_left(reads.starts, position - _MAX_SPAN)
    hi = bisect.bisect_right(reads.starts, position + _MAX_SPAN)
    return reads.short[lo:hi] + reads.long


def examples_for_candidate(
    candidate: Candidate,
    reads: list[Read],
    ref_window: str,
    encoder: PileupEncoder,
    sample: str,
) -> list[PileupExample]:
    """One example per alt-allele set of ``candidate`` (DeepVariant's ADD_HET_ALT_IMAGES mode).

    ``ref_window``: the ``width`` reference bases from ``candidate.start - width // 2``.
    """
    # Reads overlapping the candidate +- read_overlap_buffer_bp (5), as make_examples queries them.
    buffer = READ_OVERLAP_BUFFER_BP
    overlapping = [
        r
        for r in _near(reads, candidate.start)
        if r.start < candidate.end + buffer and r.end > candidate.start - buffer
    ]
    info = CallInfo(candidate.depth, candidate.allele_depths, candidate.allele_fractions)
    out: list[PileupExample] = []
    rng = np.random.default_rng(candidate.start)
    for indices in alt_allele_sets(len(candidate.alternate_bases)):
        supports: dict[str, int] = {}
        for i, keys in enumerate(candidate.support):
            for key in keys:
                supports[key] = 1 if i in indices else 2
        image = encoder.encode(candidate.start, ref_window, overlapping, supports, rng)
        out.append(
            PileupExample(
                reference_name=candidate.reference_name,
                start=candidate.start,
                end=candidate.end,
                reference_bases=candidate.reference_bases,
                alternate_bases=list(candidate.alternate_bases),
                alt_allele_indices=indices,
                image=image,
                call=info,
                sample_name=sample,
            )
        )
    return out


def partition_examples(
    partition: Region,
    reads: list[Read],
    ref: str,
    ref_start: int,
    contig_length: int,
    options: PileupOptions,
    thresholds: CandidateThresholds,
    realigner: RealignerOptions,
    sample: str,
) -> tuple[list[Candidate], list[PileupExample]]:
    """One partition of make_examples: realign ``reads`` (those overlapping ``partition``, already
    filtered), count alleles, find candidates inside the partition and draw their examples.

    ``ref`` is the contig's reference from ``ref_start`` on, reaching ``REFERENCE_PAD`` bases beyond
    the partition on both sides (or to the contig's ends); "N" outside the contig is fine.
    """
    reads = realign_region(reads, ref, ref_start, contig_length, partition.start, partition.end, realigner)
    sorted_reads = _SortedReads(reads)
    encoder = PileupEncoder(options)  # its per-read cache lives as long as the partition's reads
    counts = count_alleles(sorted_reads, partition.contig, ref, ref_start, thresholds.min_base_quality)
    candidates = find_candidates(counts, ref, ref_start, partition.start, partition.end, thresholds)
    half = options.width // 2
    examples: list[PileupExample] = []
    for candidate in candidates:
        lo = candidate.start - half - ref_start
        window = "N" * max(0, -lo) + ref[max(0, lo) : lo + options.width]
        window = window + "N" * (options.width - len(window))
        examples.extend(examples_for_candidate(candidate, sorted_reads, window, encoder, sample))
    return candidates, examples


def make_examples(
    bam_path: str | Path,
    reference_path: str | Path,
    region: Region,
    *,
    channels: int = 7,
    thresholds: CandidateThresholds | None = None,
    realign: bool = True,
    realigner: RealignerOptions | None = None,
) -> tuple[list[Candidate], list[PileupExample]]:
    """Candidates in ``region`` and their pileup examples (``channels`` 6 or 7), in position order.

    ``realign`` (default on, as DeepVariant) realigns reads locally before counting and drawing;
    when ``realigner`` is given, its ``enabled`` decides instead.
    """
    if channels not in (6, 7):
        raise InvalidArgument.field("channels", f"must be 6 or 7, got {channels}")
    thresholds = thresholds or CandidateThresholds()
    realigner = realigner or RealignerOptions(enabled=realign)
    bam = open_alignments(bam_path)
    fasta = open_reference(reference_path)
    try:
        if region.contig not in fasta.references:
            raise InvalidArgument.field("regions", f"{reference_path}: contig {region.contig!r} not in the reference")
        sample = sample_name(bam)
        options = PileupOptions(channels=channels)
        contig_length = fasta.get_reference_length(region.contig)
        all_candidates: list[Candidate] = []
        examples: list[PileupExample] = []
        for start in range(region.start, region.end, PARTITION_SIZE):
            end = min(start + PARTITION_SIZE, region.end)
            reads = fetch_reads(bam, region.contig, start, end, ReadFilter(), str(bam_path))
            ref_start = max(0, start - REFERENCE_PAD)
            ref = reference_window(fasta, region.contig, ref_start, end + REFERENCE_PAD - ref_start)
            candidates, made = partition_examples(
                Region(region.contig, start, end),
                reads,
                ref,
                ref_start,
                contig_length,
                options,
                thresholds,
                realigner,
                sample,
            )
            all_candidates.extend(candidates)
            examples.extend(made)
        return all_candidates, examples
    finally:
        bam.close()
        fasta.close()

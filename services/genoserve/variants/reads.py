"""Aligned reads from a BAM (pysam) in the form the allele counter and the pileup encoder need.

Read filters follow DeepVariant's make_examples defaults (``ReadRequirements`` and the SAM reader
options): unmapped, secondary, supplementary, duplicate and QC-failed reads are dropped, and so
are paired reads whose mate is mapped to another contig (the proper-pair flag itself is not
read) and reads with mapping quality below ``min_mapping_quality`` (5).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pysam

from genoserve.core.errors import InvalidArgument

# pysam CIGAR operation codes (SAM spec order).
OP_M, OP_I, OP_D, OP_N, OP_S, OP_H, OP_P, OP_EQ, OP_X = range(9)
MATCH_OPS = (OP_M, OP_EQ, OP_X)


def merge_cigar(parts: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(op, length) pairs as a CIGAR: neighbours with the same op joined, zero lengths dropped."""
    cigar: list[tuple[int, int]] = []
    for op, length in parts:
        if length == 0:
            continue
        if cigar and cigar[-1][0] == op:
            cigar[-1] = (op, cigar[-1][1] + length)
        else:
            cigar.append((op, length))
    return cigar


@dataclass(frozen=True)
class ReadFilter:
    """DeepVariant's default read requirements."""

    min_mapping_quality: int = 5
    min_base_quality: int = 10


@dataclass
class Read:
    """One aligned read. ``quals`` is uint8 Phred per read base; ``cigar`` pysam (op, length) pairs."""

    key: str  # fragment name + "/" + read number (0 or 1), DeepVariant's read key
    name: str
    read_number: int
    start: int  # 0-based leftmost reference position
    end: int  # exclusive reference end
    cigar: list[tuple[int, int]]
    seq: str
    quals: npt.NDArray[np.uint8]
    mapping_quality: int
    reverse: bool
    fragment_length: int


def usable(read: pysam.AlignedSegment, requirements: ReadFilter) -> bool:
    """Whether make_examples would keep ``read`` at all."""
    return not (
        read.is_unmapped
        or read.is_secondary
        or read.is_supplementary
        or read.is_duplicate
        or read.is_qcfail
        or (read.is_paired and not read.mate_is_unmapped and read.next_reference_id != read.reference_id)
        or read.mapping_quality < requirements.min_mapping_quality
        or read.query_sequence is None
        or not read.cigartuples
    )


def convert(read: pysam.AlignedSegment) -> Read:
    """A pysam read as a ``Read``."""
    number = 1 if read.is_read2 else 0
    name = read.query_name or ""
    qualities = read.query_qualities
    seq = read.query_sequence or ""
    quals = np.asarray(qualities, dtype=np.uint8) if qualities is not None else np.full(len(seq), 30, np.uint8)
    return Read(
        key=f"{name}/{number}",
        name=name,
        read_number=number,
        start=int(read.reference_start),
        end=int(read.reference_end or read.reference_start),
        cigar=[(int(op), int(n)) for op, n in read.cigartuples or []],
        seq=seq.upper(),
        quals=quals,
        mapping_quality=int(read.mapping_quality),
        reverse=bool(read.is_reverse),
        fragment_length=int(read.template_length),
    )


def open_alignments(path: str | Path, field: str = "bam") -> pysam.AlignmentFile:
    """Open an indexed BAM/CRAM; a missing file or index is INVALID_ARGUMENT naming ``path``."""
    try:
        bam = pysam.AlignmentFile(str(path), "rb")
    except (OSError, ValueError) as exc:
        raise InvalidArgument.field(field, f"{path}: cannot open alignments: {exc}") from exc
    if not bam.has_index():
        bam.close()
        raise InvalidArgument.field(field, f"{path}: no index (.bai/.csi) next to the BAM; run samtools index")
    return bam


def fetch_reads(
    bam: pysam.AlignmentFile,
    contig: str,
    start: int,
    end: int,
    requirements: ReadFilter | None = None,
    path: str = "bam",
) -> list[Read]:
    """Usable reads overlapping ``[start, end)`` of ``contig``, in BAM order.

    A contig the BAM does not have, or a truncated BAM, is INVALID_ARGUMENT naming file and contig.
    """
    requirements = requirements or ReadFilter()
    if contig not in bam.references:
        hint = ""
        alt = contig[3:] if contig.startswith("chr") else f"chr{contig}"
        if alt in bam.references:
            hint = f" (the BAM names it {alt!r}: contig naming differs between inputs)"
        raise InvalidArgument.field("regions", f"{path}: contig {contig!r} not in the BAM header{hint}")
    try:
        return [convert(r) for r in bam.fetch(contig, max(0, start), end) if usable(r, requirements)]
    except (OSError, ValueError) as exc:
        raise InvalidArgument.field("bam", f"{path}: unreadable around {contig}:{start + 1}-{end}: {exc}") from exc


def reference_length(cigar: list[tuple[int, int]]) -> int:
    """Reference bases an alignment spans (M, D, N, =, X)."""
    return sum(n for op, n in cigar if op in (*MATCH_OPS, OP_D, OP_N))


def with_alignment(read: Read, start: int, cigar: list[tuple[int, int]]) -> Read:
    """``read`` placed at ``start`` with ``cigar`` (everything else unchanged)."""
    return Read(
        key=read.key,
        name=read.name,
        read_number=read.read_number,
        start=start,
        end=start + reference_length(cigar),
        cigar=cigar,
        seq=read.seq,
        quals=read.quals,
        mapping_quality=read.mapping_quality,
        reverse=read.reverse,
        fragment_length=read.fragment_length,
    )

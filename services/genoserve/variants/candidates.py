"""Candidate variants from allele counts, with DeepVariant's default thresholds.

Counting follows DeepVariant's AlleleCounter (allelecounter.cc, r1.9), simplified (no indel
left-normalisation of CIGARs). It counts the reads it is given: ``make_examples`` passes them
through the local realigner (``realign``) first, as DeepVariant does by default:

- every aligned base (M/=/X) with base quality >= 10 and a canonical base gives that read a
  REFERENCE or SUBSTITUTION allele at its position;
- an insertion gives the anchor position (the base before it) the allele ``prev_base + inserted``
  and a deletion the allele ``ref[anchor : anchor + 1 + len]`` (``prev_base`` from the read, or
  from the reference when the indel opens the read, as AlleleCounter::GetPrevBase does); the
  indel replaces the anchor's base allele; inserted bases must be canonical with mean quality >= 10;
- a read contributes at most one allele per position.

A position becomes a candidate when some alt allele has >= 2 supporting reads and an allele
fraction (count / all counted reads at the position) >= 0.12 for SNVs or >= 0.06 for indels
(DeepVariant's ``vsc_min_count_*`` / ``vsc_min_fraction_*`` defaults). Alleles at one position
are merged into one multi-allelic candidate whose reference spans the longest deletion.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from genoserve.variants.reads import MATCH_OPS, OP_D, OP_I, OP_N, OP_S, Read

CANONICAL = frozenset("ACGT")


@dataclass(frozen=True)
class CandidateThresholds:
    """DeepVariant's very-sensitive-caller defaults."""

    min_count_snps: int = 2
    min_count_indels: int = 2
    min_fraction_snps: float = 0.12
    min_fraction_indels: float = 0.06
    min_base_quality: int = 10


@dataclass
class Candidate:
    """One candidate site. ``start``/``end`` 0-based half-open over ``reference_bases``.

    ``support[i]`` holds the read keys supporting ``alternate_bases[i]``; ``ref_support`` the
    reads showing the reference; ``depth`` all reads counted at the position.
    """

    reference_name: str
    start: int
    end: int
    reference_bases: str
    alternate_bases: list[str]
    support: list[set[str]]
    ref_support: set[str] = field(default_factory=set)
    depth: int = 0

    @property
    def allele_depths(self) -> list[int]:
        return [len(self.ref_support), *(len(s) for s in self.support)]

    @property
    def allele_fractions(self) -> list[float]:
        return [len(s) / self.depth if self.depth else 0.0 for s in self.support]


def read_alleles(read: Read, ref: str, ref_offset: int, min_base_quality: int) -> dict[int, str]:
    """Position -> allele of ``read`` ("=" for the reference, a base for a SNV, ``+``/``-`` indels).

    Indel alleles are written ``"+" + anchor + inserted`` and ``"-" + deleted_ref_span_with_anchor``.
    ``ref`` holds the reference from ``ref_offset`` on and must cover the read.
    """
    alleles: dict[int, str] = {}
    ref_i = read.start
    read_i = 0
    seq, quals = read.seq, read.quals
    for op, length in read.cigar:
        if op in MATCH_OPS:
            for k in range(length):
                base = seq[read_i + k]
                if quals[read_i + k] >= min_base_quality and base in CANONICAL:
                    ref_base = ref[ref_i + k - ref_offset]
                    alleles[ref_i + k] = "=" if base == ref_base else base
                else:
                    alleles.pop(ref_i + k, None)
            ref_i += length
            read_i += length
        elif op == OP_I:
            inserted = seq[read_i : read_i + length]
            prev = _previous_base(seq, read_i, ref, ref_i - 1 - ref_offset)
            mean_q = float(quals[read_i : read_i + length].mean()) if length else 0.0
            if set(inserted) <= CANONICAL and prev in CANONICAL and mean_q >= min_base_quality:
                alleles[ref_i - 1] = "+" + prev + inserted
            else:
                alleles.pop(ref_i - 1, None)
            read_i += length
        elif op == OP_D:
            prev = _previous_base(seq, read_i, ref, ref_i - 1 - ref_offset)
            span = ref[ref_i - 1 - ref_offset : ref_i + length - ref_offset] if ref_i > ref_offset else ""
            if prev in CANONICAL and len(span) == length + 1 and set(span) <= CANONICAL:
                alleles[ref_i - 1] = "-" + span
            else:
                alleles.pop(ref_i - 1, None)
            ref_i += length
        elif op == OP_N:
            ref_i += length
        elif op == OP_S:
            read_i += length
    return alleles


def _previous_base(seq: str, read_i: int, ref: str, ref_i: int) -> str:
    """The base before an indel: the read's, or the reference's when the indel opens the read
    (AlleleCounter::GetPrevBase); "" off the reference."""
    if read_i > 0:
        return seq[read_i - 1]
    return ref[ref_i] if 0 <= ref_i < len(ref) else ""


@dataclass
class AlleleCounts:
    """Per position: read key -> allele (see ``read_alleles``)."""

    reference_name: str
    by_position: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    #: Positions where some read shows a non-reference allele (the only possible candidates).
    non_ref: set[int] = field(default_factory=set)


def count_alleles(
    reads: Iterable[Read], reference_name: str, ref: str, ref_offset: int, min_base_quality: int = 10
) -> AlleleCounts:
    """Allele of every read at every position it covers (``ref`` starts at ``ref_offset``)."""
    counts = AlleleCounts(reference_name)
    for read in reads:
        for pos, allele in read_alleles(read, ref, ref_offset, min_base_quality).items():
            counts.by_position[pos][read.key] = allele
            if allele != "=":
                counts.non_ref.add(pos)
    return counts


def _is_indel(allele: str) -> bool:
    return allele[0] in "+-"


def find_candidates(
    counts: AlleleCounts,
    ref: str,
    ref_offset: int,
    start: int,
    end: int,
    thresholds: CandidateThresholds | None = None,
) -> list[Candidate]:
    """Candidate sites with start in ``[start, end)``, sorted by position."""
    thresholds = thresholds or CandidateThresholds()
    out: list[Candidate] = []
    for pos in sorted(p for p in counts.non_ref if start <= p < end):
        by_read = counts.by_position[pos]
        ref_base = ref[pos - ref_offset]
        if ref_base not in CANONICAL:
            continue
        depth = len(by_read)
        groups: dict[str, set[str]] = defaultdict(set)
        for key, allele in by_read.items():
            groups[allele].add(key)
        kept: list[str] = []
        for allele, keys in groups.items():
            if allele == "=":
                continue
            indel = _is_indel(allele)
            min_count = thresholds.min_count_indels if indel else thresholds.min_count_snps
            min_fraction = thresholds.min_fraction_indels if indel else thresholds.min_fraction_snps
            if len(keys) >= min_count and len(keys) / depth >= min_fraction:
                kept.append(allele)
        if not kept:
            continue
        # Merge: the reference spans the longest deletion; every alt is re-expressed against it.
        ref_len = max([len(a) - 1 for a in kept if a[0] == "-"] + [1])
        ref_bases = ref[pos - ref_offset : pos - ref_offset + ref_len]
        alts: list[str] = []
        for allele in kept:
            if allele[0] == "-":
                alt = ref_bases[0] + ref_bases[len(allele) - 1 :]
            elif allele[0] == "+":
                alt = allele[1:] + ref_bases[1:]
            else:
                alt = allele + ref_bases[1:]
            alts.append(alt)
        order = sorted(range(len(kept)), key=lambda i: alts[i])
        out.append(
            Candidate(
                reference_name=counts.reference_name,
                start=pos,
                end=pos + ref_len,
                reference_bases=ref_bases,
                alternate_bases=[alts[i] for i in order],
                support=[groups[kept[i]] for i in order],
                ref_support=groups.get("=", set()),
                depth=depth,
            )
        )
    return out


def alt_allele_sets(n_alts: int) -> list[tuple[int, ...]]:
    """The alt-allele subsets DeepVariant makes one example each for: every alt, then every pair."""
    sets: list[tuple[int, ...]] = [(i,) for i in range(n_alts)]
    sets.extend((i, j) for i in range(n_alts) for j in range(i + 1, n_alts))
    return sets

"""Paired-end Illumina-like reads simulated over a real reference with planted variants.

A diploid genome is made from a reference stretch by planting SNVs and 1-12 bp indels (het or
hom-alt). Fragments (length ~ N(300, 40)) are drawn from either haplotype, read 101 bp from both
ends (read 1 forward, read 2 reverse), and given:

- base qualities falling along the read (mean ~36 at the 5' end to ~28 at the 3' end, Phred
  noise, 3% low-quality bases in 2..12), and substitution errors with probability 10^(-Q/10);
- mapping quality 60 for most reads, 20..59 for 10%;
- the true alignment to the reference as CIGAR (indels inside the read; an insertion at a read
  end becomes a soft clip, as aligners do).

Indels within 12 bp of a read end are placed as an aligner would: the short end aligned without
the gap when that costs at most 2 mismatches, else soft-clipped (so hom-alt indels show
reference-looking reads, as in real data without realignment).

Hard negatives: "paralog" sites where 15-35% extra reads with a non-genome allele and low mapping
quality (0..25) pile up, as mismapped reads do, and systematic-error sites with 8-20% such reads
with ordinary mapping qualities and insert sizes; such candidates are hom-ref (label 0).
Coverage is drawn per chunk between ``min_coverage`` and ``max_coverage``.

Off by default (``SimulationConfig``; the trainer turns them on for training data only): fragment
length spread and base-quality levels drawn per chunk; mapping-bias segments, where the reads of
one haplotype get lower mapping qualities and some are lost (as near segmental duplications: real
alleles at allele fractions below 0.5, carried by low-MAPQ reads); paralog reads that carry the
copy's other differences near the site too, as mismapped reads do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from genoserve.variants.reads import OP_D, OP_I, OP_M, OP_S, Read

READ_LENGTH = 101
BASES = "ACGT"


@dataclass(frozen=True)
class SimulationConfig:
    snv_rate: float = 1 / 250
    indel_rate: float = 1 / 1200
    paralog_rate: float = 1 / 700
    hom_fraction: float = 0.4
    min_coverage: float = 20.0
    max_coverage: float = 60.0
    chunk: int = 20_000
    fragment_mean: float = 300.0
    fragment_sd: float = 40.0
    low_mq_fraction: float = 0.1
    # Options below are off by default (the held-out simulation keeps the profile above).
    #: Per-chunk fragment-length SD drawn from this range (overrides ``fragment_sd``); shortest fragment.
    fragment_sd_range: tuple[float, float] | None = None
    min_fragment: int = 2 * READ_LENGTH
    #: Per-chunk mean base quality at the read's 5' and 3' ends drawn from these ranges (else 36, 28).
    quality_start_range: tuple[float, float] | None = None
    quality_end_range: tuple[float, float] | None = None
    #: Per-chunk plateau of mean base quality (cycles 10..60 %) drawn from this range; None: a straight
    #: fall from start to end. Qualities are capped at 41, so a high plateau puts many bases at 40-41.
    quality_plateau_range: tuple[float, float] | None = None
    #: Mapping-bias segments (per bp): one haplotype's reads there map worse (lower MAPQ, some lost).
    bias_segment_rate: float = 0.0
    bias_segment_length: tuple[int, int] = (300, 1500)
    bias_low_mq: tuple[int, int] = (10, 45)
    bias_max_loss: float = 0.45
    #: Paralog reads carry this many extra differences per bp (drawn per site), shared by the site's reads.
    paralog_divergence: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class TruthVariant:
    """A planted variant, 0-based ``start`` on the reference; ``genotype`` (h1, h2) in {0, 1}."""

    start: int
    ref: str
    alt: str
    genotype: tuple[int, int]

    @property
    def is_snv(self) -> bool:
        return len(self.ref) == 1 and len(self.alt) == 1


@dataclass
class SimulatedSample:
    contig: str
    start: int  # reference offset of ``reference``
    reference: str
    reads: list[Read]
    truth: list[TruthVariant]
    paralog_sites: list[int] = field(default_factory=list)


def plant_variants(
    reference: str, offset: int, rng: np.random.Generator, config: SimulationConfig
) -> list[TruthVariant]:
    """Non-overlapping SNVs and indels (1-12 bp), with at least 12 bp between them, away from N bases."""
    variants: list[TruthVariant] = []
    length = len(reference)
    n = rng.binomial(length, config.snv_rate + config.indel_rate)
    positions = np.sort(rng.choice(np.arange(150, length - 150), size=min(n, length - 300), replace=False))
    last = -100
    for pos in positions.tolist():
        if pos - last < 12:
            continue
        ref_base = reference[pos]
        if ref_base not in BASES or "N" in reference[pos : pos + 16]:
            continue
        hom = rng.random() < config.hom_fraction
        genotype = (1, 1) if hom else ((1, 0) if rng.random() < 0.5 else (0, 1))
        if rng.random() < config.snv_rate / (config.snv_rate + config.indel_rate):
            alt = BASES[(BASES.index(ref_base) + int(rng.integers(1, 4))) % 4]
            variants.append(TruthVariant(offset + pos, ref_base, alt, genotype))
        else:
            size = int(rng.integers(1, 13))
            if rng.random() < 0.5:
                inserted = "".join(rng.choice(list(BASES), size=size).tolist())
                variants.append(TruthVariant(offset + pos, ref_base, ref_base + inserted, genotype))
            else:
                variants.append(TruthVariant(offset + pos, reference[pos : pos + size + 1], ref_base, genotype))
        last = pos + 14
    return variants


def haplotype(
    reference: str, offset: int, variants: list[TruthVariant], which: int
) -> tuple[str, npt.NDArray[np.int64]]:
    """Sequence of haplotype ``which`` and, per base, its reference position (-1: inserted)."""
    pieces: list[str] = []
    coords: list[npt.NDArray[np.int64]] = []
    cursor = 0
    for v in variants:
        if not v.genotype[which]:
            continue
        pos = v.start - offset
        pieces.append(reference[cursor:pos])
        coords.append(np.arange(cursor, pos, dtype=np.int64))
        # Anchor base, then the alt's remaining bases (inserted) or the skipped ref bases (deleted).
        pieces.append(v.alt)
        if len(v.alt) >= len(v.ref) and len(v.ref) == 1:
            coords.append(np.array([pos] + [-1] * (len(v.alt) - 1), dtype=np.int64))
        else:  # deletion: alt is the anchor only
            coords.append(np.array([pos], dtype=np.int64))
        cursor = pos + len(v.ref)
    pieces.append(reference[cursor:])
    coords.append(np.arange(cursor, len(reference), dtype=np.int64))
    ref_coords = np.concatenate(coords)
    ref_coords[ref_coords >= 0] += offset
    return "".join(pieces), ref_coords


def _cigar(ref_coords: npt.NDArray[np.int64]) -> tuple[int, list[tuple[int, int]]] | None:
    """Start and CIGAR of a read whose bases map to ``ref_coords`` (-1 = inserted)."""
    ops: list[list[int]] = []
    previous = -1
    start = -1
    for c in ref_coords.tolist():
        if c < 0:
            op = OP_I if start >= 0 else OP_S
        else:
            if start < 0:
                start = c
            elif c > previous + 1:
                ops.append([OP_D, c - previous - 1])
            op = OP_M
            previous = c
        if ops and ops[-1][0] == op:
            ops[-1][1] += 1
        else:
            ops.append([op, 1])
    if start < 0:
        return None
    if ops[-1][0] == OP_I:
        ops[-1][0] = OP_S
    return start, [(op, n) for op, n in ops]


def _aligner_view(
    seq: str, coords: npt.NDArray[np.int64], reference: str, offset: int, edge: int
) -> npt.NDArray[np.int64]:
    """How a short-read aligner places a read whose indel lies near an end: the short end is
    aligned without the gap (mismatches), or soft-clipped when that costs more than 2 mismatches."""
    placed = np.nonzero(coords >= 0)[0]
    if placed.size < 2:
        return coords
    gaps = np.nonzero((np.diff(coords[placed]) != 1) | (np.diff(placed) != 1))[0]
    if gaps.size == 0:
        return coords
    out = coords.copy()
    first, last = int(gaps[0]), int(gaps[-1])
    if placed[first] + 1 < edge:  # indel near the start: re-place the head from the first base after it
        anchor = int(placed[first + 1])
        head = np.arange(anchor) - anchor + int(coords[anchor])
        window = reference[max(0, head[0] - offset) : max(0, head[-1] + 1 - offset)] if head[0] >= offset else ""
        mismatches = sum(a != b for a, b in zip(seq[:anchor], window, strict=False)) if window else anchor
        out[:anchor] = head if mismatches <= 2 and len(window) == anchor else -1
    if len(seq) - placed[last + 1] < edge and last >= first:  # near the end: re-place the tail
        anchor = int(placed[last])
        tail = np.arange(len(seq) - anchor - 1) + int(coords[anchor]) + 1
        lo, hi = tail[0] - offset, tail[-1] + 1 - offset if tail.size else 0
        window = reference[lo:hi] if tail.size and lo >= 0 and hi <= len(reference) else ""
        mismatches = sum(a != b for a, b in zip(seq[anchor + 1 :], window, strict=False)) if window else tail.size
        out[anchor + 1 :] = tail if window and mismatches <= 2 and len(window) == tail.size else -1
    return out


def _qualities(
    rng: np.random.Generator, n: int, first: float = 36.0, last: float = 28.0, plateau: float | None = None
) -> npt.NDArray[np.uint8]:
    """Phred qualities in sequencing order: a straight fall from ``first`` to ``last``, or (with
    ``plateau``) a rise over the first 10 cycles to the plateau, held to 60 % of the read, then a fall."""
    if plateau is None:
        mean = np.linspace(first, last, n)
    else:
        mean = np.interp(np.arange(n), [0, 10, 0.6 * (n - 1), n - 1], [first, plateau, plateau - 1.0, last])
    q = np.clip(np.rint(rng.normal(mean, 3.0)), 2, 41)
    low = rng.random(n) < 0.03
    q[low] = rng.integers(2, 13, size=int(low.sum()))
    return q.astype(np.uint8)


def _mutate(seq: str, quals: npt.NDArray[np.uint8], rng: np.random.Generator) -> str:
    p_error = 10.0 ** (-quals.astype(np.float64) / 10.0)
    errors = np.nonzero(rng.random(len(seq)) < p_error)[0]
    if errors.size == 0:
        return seq
    chars = list(seq)
    for i in errors.tolist():
        base = chars[i]
        chars[i] = BASES[(BASES.index(base) + int(rng.integers(1, 4))) % 4] if base in BASES else "A"
    return "".join(chars)


def _make_read(
    name: str,
    number: int,
    seq: str,
    coords: npt.NDArray[np.int64],
    reverse: bool,
    mapq: int,
    tlen: int,
    rng: np.random.Generator,
    reference: str = "",
    offset: int = 0,
    quality: tuple[float, float, float | None] = (36.0, 28.0, None),
) -> Read | None:
    if reference:
        coords = _aligner_view(seq, coords, reference, offset, edge=12)
    placed = _cigar(coords)
    if placed is None:
        return None
    start, cigar = placed
    quals = _qualities(rng, len(seq), *quality)
    if reverse:  # sequencing runs 5'->3' on the reverse strand: qualities fall right to left
        quals = quals[::-1].copy()
    seq = _mutate(seq, quals, rng)
    span = sum(n for op, n in cigar if op in (OP_M, OP_D))
    return Read(
        key=f"{name}/{number}",
        name=name,
        read_number=number,
        start=start,
        end=start + span,
        cigar=cigar,
        seq=seq,
        quals=quals,
        mapping_quality=mapq,
        reverse=reverse,
        fragment_length=tlen,
    )


def simulate(
    contig: str, reference: str, offset: int, seed: int, config: SimulationConfig | None = None
) -> SimulatedSample:
    """Reads and truth over ``reference`` (which starts at ``offset`` on ``contig``)."""
    config = config or SimulationConfig()
    rng = np.random.default_rng(seed)
    reference = reference.upper()
    truth = plant_variants(reference, offset, rng, config)
    haps = [haplotype(reference, offset, truth, which) for which in (0, 1)]
    segments = _bias_segments(len(reference), rng, config) if config.bias_segment_rate > 0 else []
    reads: list[Read] = []
    fragment = 0
    for chunk_start in range(0, len(reference), config.chunk):
        chunk_end = min(len(reference), chunk_start + config.chunk)
        coverage = rng.uniform(config.min_coverage, config.max_coverage)
        n_fragments = int(coverage * (chunk_end - chunk_start) / (2 * READ_LENGTH))
        fragment_sd = rng.uniform(*config.fragment_sd_range) if config.fragment_sd_range else config.fragment_sd
        quality = (
            rng.uniform(*config.quality_start_range) if config.quality_start_range else 36.0,
            rng.uniform(*config.quality_end_range) if config.quality_end_range else 28.0,
            rng.uniform(*config.quality_plateau_range) if config.quality_plateau_range else None,
        )
        for _ in range(n_fragments):
            which = int(rng.integers(0, 2))
            seq, coords = haps[which]
            length = int(np.clip(rng.normal(config.fragment_mean, fragment_sd), config.min_fragment, 600))
            # Place by reference position, then find the haplotype index there.
            ref_pos = offset + int(rng.integers(chunk_start, max(chunk_start + 1, chunk_end - length)))
            h = int(np.searchsorted(np.maximum.accumulate(coords), ref_pos))
            if h + length > len(seq):
                continue
            low = rng.random() < config.low_mq_fraction
            mapq = int(rng.integers(20, 60)) if low else 60
            segment = next((g for g in segments if g.lo < ref_pos - offset + length and g.hi > ref_pos - offset), None)
            if segment is not None:
                biased = _biased_mapq(segment, which, mapq, rng, config)
                if biased is None:
                    continue
                mapq = biased
            fragment += 1
            name = f"sim:{seed}:{fragment}"
            head = slice(h, h + READ_LENGTH)
            first = _make_read(name, 0, seq[head], coords[head], False, mapq, length, rng, reference, offset, quality)
            tail = slice(h + length - READ_LENGTH, h + length)
            second = _make_read(name, 1, seq[tail], coords[tail], True, mapq, -length, rng, reference, offset, quality)
            reads.extend(r for r in (first, second) if r is not None)
    paralogs = _paralog_reads(contig, reference, offset, truth, rng, config, reads)
    reads.sort(key=lambda r: r.start)
    return SimulatedSample(contig, offset, reference, reads, truth, paralogs)


@dataclass(frozen=True)
class _BiasSegment:
    """Reference stretch ``[lo, hi)`` (sample coordinates) where reads of ``haplotype`` map worse."""

    lo: int
    hi: int
    haplotype: int
    mapq: int  # the usual MAPQ of the worse-mapping haplotype's reads here
    low_fraction: float  # that haplotype's reads at a lowered MAPQ
    loss: float  # that haplotype's fragments lost (mapped elsewhere)
    other_low_fraction: float  # the other haplotype's reads at a lowered MAPQ


def _bias_segments(length: int, rng: np.random.Generator, config: SimulationConfig) -> list[_BiasSegment]:
    """Mapping-bias segments, as near segmental duplications: the haplotype that resembles the copy
    elsewhere gets lower mapping qualities and loses some reads, so its alleles show at allele
    fractions below 0.5 and with low MAPQ while being real."""
    segments: list[_BiasSegment] = []
    for _ in range(rng.binomial(length, config.bias_segment_rate)):
        lo = int(rng.integers(0, length))
        hi = lo + int(rng.integers(*config.bias_segment_length))
        segments.append(
            _BiasSegment(
                lo,
                hi,
                int(rng.integers(0, 2)),
                int(rng.integers(*config.bias_low_mq)),
                float(rng.uniform(0.5, 1.0)),
                float(rng.uniform(0.0, config.bias_max_loss)),
                float(rng.uniform(0.0, 0.3)),
            )
        )
    return segments


def _biased_mapq(
    segment: _BiasSegment, which: int, mapq: int, rng: np.random.Generator, config: SimulationConfig
) -> int | None:
    """The MAPQ of a fragment from haplotype ``which`` overlapping ``segment``; None: lost."""
    if which == segment.haplotype:
        if rng.random() < segment.loss:
            return None
        if rng.random() < segment.low_fraction:
            return segment.mapq if rng.random() < 0.6 else int(rng.integers(*config.bias_low_mq))
    elif rng.random() < segment.other_low_fraction:
        return int(rng.integers(*config.bias_low_mq))
    return mapq


def _paralog_reads(
    contig: str,
    reference: str,
    offset: int,
    truth: list[TruthVariant],
    rng: np.random.Generator,
    config: SimulationConfig,
    reads: list[Read],
) -> list[int]:
    """Add reads carrying a non-genome SNV at random sites; return those sites. Two thirds are
    mismapped-paralog sites (15-35% extra reads, MAPQ 0..25), one third systematic-error sites
    (8-20% extra reads with the usual MAPQ mix); both are hom-ref. Their reads look like properly paired
    ones (normal insert sizes), so only allele fraction, mapping quality and context tell."""
    taken = {v.start for v in truth}
    sites: list[int] = []
    n_sites = rng.binomial(len(reference), config.paralog_rate)
    for k in range(n_sites):
        pos = int(rng.integers(200, len(reference) - 200))
        if any(abs(offset + pos - t) < 15 for t in taken) or reference[pos] not in BASES:
            continue
        sites.append(offset + pos)
        alt = BASES[(BASES.index(reference[pos]) + int(rng.integers(1, 4))) % 4]
        systematic = rng.random() < 1 / 3
        share = rng.uniform(0.08, 0.2) if systematic else rng.uniform(0.15, 0.35)
        depth = int(rng.uniform(config.min_coverage, config.max_coverage) * share)
        differences = {pos: alt}
        if not systematic and config.paralog_divergence[1] > 0:  # the copy's own differences nearby
            rate = rng.uniform(*config.paralog_divergence)
            for extra in np.nonzero(rng.random(2 * READ_LENGTH) < rate)[0].tolist():
                at = pos - READ_LENGTH + extra
                if at != pos and reference[at] in BASES:
                    differences[at] = BASES[(BASES.index(reference[at]) + int(rng.integers(1, 4))) % 4]
        for j in range(depth):
            start = pos - int(rng.integers(1, READ_LENGTH - 1))
            seq = "".join(
                differences.get(i, base) for i, base in enumerate(reference[start : start + READ_LENGTH], start)
            )
            coords = np.arange(offset + start, offset + start + READ_LENGTH, dtype=np.int64)
            name = f"paralog:{k}:{j}"
            if systematic:  # mapping qualities like any other read: only the allele fraction tells
                mapq = int(rng.integers(20, 60)) if rng.random() < config.low_mq_fraction else 60
            else:
                mapq = int(rng.integers(0, 26))
            reverse = bool(rng.random() < 0.5)
            tlen = int(np.clip(rng.normal(config.fragment_mean, config.fragment_sd), 2 * READ_LENGTH, 600))
            read = _make_read(name, 0, seq, coords, reverse, mapq, -tlen if reverse else tlen, rng)
            if read is not None:
                reads.append(read)
    return sites

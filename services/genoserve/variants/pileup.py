"""Pileup images in DeepVariant's layout and value encodings (pileup_image_native.cc and
deepvariant/channels/*.cc, r1.9; option values from make_examples' defaults).

An image is uint8 ``(height=100, width=221, channels)``: 5 reference rows, then up to 95 reads
sorted by alignment start, fragment name and read number, then zero rows. Column ``c`` shows
reference position ``variant.start - 110 + c``. Channels (6, or 7 with insert_size):

==========================  ==============================================================
read_base                   A=250, G=180, T=100, C=30, other 0; indels drawn as ``*`` = 0
base_quality                int(254 * min(q, 40) / 40); reference rows q=60 -> 254
mapping_quality             int(254 * min(mq, 60) / 60); reference rows 254
strand                      forward 70, reverse 240; reference rows 70
read_supports_variant       254 if the read supports an alt shown, 152 otherwise (0.6)
base_differs_from_ref       50 where equal to the reference (0.2), 254 where not
insert_size                 int(254 * min(|TLEN|, 1000) / 1000); reference rows 254
==========================  ==============================================================

Per read (CalculateBaseLevelData): aligned bases fill their column; an insertion overwrites its
anchor column (the base before it) with ``*`` and the quality of its first inserted base; a
deletion overwrites its anchor column with ``*`` and the quality of the base before it; soft clips
and skipped bases draw nothing. A read whose base at the variant start has quality < 10 is left
out. Arithmetic is float32 as in the C++ (``kMaxPixelValueAsFloat * value / max``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from genoserve.variants.reads import MATCH_OPS, OP_D, OP_I, OP_N, OP_S, Read

HEIGHT = 100
WIDTH = 221
REFERENCE_BAND = 5
_F254 = np.float32(254.0)


def _alpha(value: float) -> int:
    return int(_F254 * np.float32(value))


@dataclass(frozen=True)
class PileupOptions:
    """DeepVariant's make_examples defaults (PileupImageOptions in the golden run_info)."""

    height: int = HEIGHT
    width: int = WIDTH
    reference_band_height: int = REFERENCE_BAND
    channels: int = 7
    base_quality_cap: int = 40
    mapping_quality_cap: int = 60
    reference_base_quality: int = 60
    positive_strand_color: int = 70
    negative_strand_color: int = 240
    allele_supporting_read_alpha: float = 1.0
    allele_unsupporting_read_alpha: float = 0.6
    other_allele_supporting_read_alpha: float = 0.6
    reference_matching_read_alpha: float = 0.2
    reference_mismatching_read_alpha: float = 1.0
    min_mapping_quality: int = 5
    min_base_quality: int = 10
    max_fragment_length: int = 1000


#: Read-base colours: A and G offset 40, T and C offset 30, stride 70.
BASE_COLORS = np.zeros(256, dtype=np.uint8)
for _base, _color in {"A": 250, "G": 180, "T": 100, "C": 30}.items():
    BASE_COLORS[ord(_base)] = _color


def scale(values: npt.NDArray[np.int64] | int, cap: int) -> npt.NDArray[np.uint8]:
    """DeepVariant's ScaleColor: ``int(254 * min(value, cap) / cap)`` in float32."""
    v = np.minimum(np.asarray(values, dtype=np.int64), cap).astype(np.float32)
    return (_F254 * (v / np.float32(cap))).astype(np.uint8)


@dataclass
class ReadEvents:
    """What one read draws: reference positions, base characters (as uint8) and qualities."""

    positions: npt.NDArray[np.int64]
    bases: npt.NDArray[np.uint8]
    quals: npt.NDArray[np.uint8]


def read_events(read: Read) -> ReadEvents:
    """The (ref position, base, quality) triples CalculateBaseLevelData draws for ``read``, in order.

    Later triples overwrite earlier ones at the same column.
    """
    positions: list[int] = []
    bases: list[int] = []
    quals: list[int] = []
    seq = read.seq.encode()
    ref_i = read.start
    read_i = 0
    star = ord("*")
    for op, length in read.cigar:
        if op in MATCH_OPS:
            positions.extend(range(ref_i, ref_i + length))
            bases.extend(seq[read_i : read_i + length])
            quals.extend(read.quals[read_i : read_i + length].tolist())
            ref_i += length
            read_i += length
        elif op == OP_I:
            if ref_i > 0:
                positions.append(ref_i - 1)
                bases.append(star)
                quals.append(int(read.quals[read_i]) if read_i < len(read.quals) else 0)
            read_i += length
        elif op == OP_S:
            read_i += length
        elif op == OP_D:
            if read_i > 0:
                positions.append(ref_i - 1)
                bases.append(star)
                quals.append(int(read.quals[read_i - 1]))
            ref_i += length
        elif op == OP_N:
            ref_i += length
    return ReadEvents(
        np.asarray(positions, dtype=np.int64), np.asarray(bases, dtype=np.uint8), np.asarray(quals, dtype=np.uint8)
    )


class PileupEncoder:
    """Builds pileup images for candidates; caches each read's events across candidates."""

    def __init__(self, options: PileupOptions | None = None) -> None:
        self.options = options or PileupOptions()
        self._events: dict[int, ReadEvents] = {}

    def _read_events(self, read: Read) -> ReadEvents:
        cached = self._events.get(id(read))
        if cached is None:
            cached = read_events(read)
            self._events[id(read)] = cached
        return cached

    def reference_rows(self, ref_window: str) -> npt.NDArray[np.uint8]:
        """One reference row ``(width, channels)`` for the window's reference bases."""
        o = self.options
        row = np.zeros((len(ref_window), o.channels), dtype=np.uint8)
        row[:, 0] = BASE_COLORS[np.frombuffer(ref_window.encode(), dtype=np.uint8)]
        row[:, 1] = scale(o.reference_base_quality, o.base_quality_cap)
        row[:, 2] = scale(o.reference_base_quality, o.base_quality_cap)
        row[:, 3] = o.positive_strand_color
        row[:, 4] = _alpha(o.allele_unsupporting_read_alpha)
        row[:, 5] = _alpha(o.reference_matching_read_alpha)
        if o.channels > 6:
            row[:, 6] = int(_F254)
        return row

    def read_row(
        self, read: Read, ref_window: npt.NDArray[np.uint8], window_start: int, variant_start: int, support: int
    ) -> npt.NDArray[np.uint8] | None:
        """The row of ``read`` (None when DeepVariant leaves it out). ``support``: 0 ref, 1 alt shown, 2 other."""
        o = self.options
        if read.mapping_quality < o.min_mapping_quality:
            return None
        events = self._read_events(read)
        at_call = events.positions == variant_start
        if np.any(events.quals[at_call] < o.min_base_quality):
            return None
        cols = events.positions - window_start
        inside = (cols >= 0) & (cols < o.width)
        cols = cols[inside]
        bases = events.bases[inside]
        quals = events.quals[inside]
        row = np.zeros((o.width, o.channels), dtype=np.uint8)
        if cols.size == 0:
            return row
        row[cols, 0] = BASE_COLORS[bases]
        row[cols, 1] = scale(quals.astype(np.int64), o.base_quality_cap)
        row[cols, 2] = scale(read.mapping_quality, o.mapping_quality_cap)
        row[cols, 3] = o.negative_strand_color if read.reverse else o.positive_strand_color
        alpha = (
            o.allele_unsupporting_read_alpha,
            o.allele_supporting_read_alpha,
            o.other_allele_supporting_read_alpha,
        )[support]
        row[cols, 4] = _alpha(alpha)
        matches = bases == ref_window[cols]
        row[cols, 5] = np.where(
            matches, _alpha(o.reference_matching_read_alpha), _alpha(o.reference_mismatching_read_alpha)
        )
        if o.channels > 6:
            row[cols, 6] = scale(abs(read.fragment_length), o.max_fragment_length)
        return row

    def encode(
        self,
        variant_start: int,
        ref_window: str,
        reads: list[Read],
        supports: dict[str, int],
        rng: np.random.Generator | None = None,
    ) -> npt.NDArray[np.uint8]:
        """The image ``(height, width, channels)`` for one candidate allele set.

        ``ref_window`` is the reference from ``variant_start - width // 2`` (``width`` bases, "N"
        beyond the contig); ``reads`` overlap the window; ``supports`` maps read keys to 1 (supports
        an alt shown) or 2 (supports another alt). With more reads than rows, a random subset
        (``rng``) is kept, so such sites do not match DeepVariant's own sampling pixel for pixel.
        """
        o = self.options
        window_start = variant_start - o.width // 2
        max_reads = o.height - o.reference_band_height
        ref_codes = np.frombuffer(ref_window.encode(), dtype=np.uint8)
        order = list(range(len(reads)))
        if len(reads) > max_reads:
            (rng or np.random.default_rng(0)).shuffle(order)
        rows: list[tuple[int, str, int, npt.NDArray[np.uint8]]] = []
        for index in order:
            if len(rows) >= max_reads:
                break
            read = reads[index]
            row = self.read_row(read, ref_codes, window_start, variant_start, supports.get(read.key, 0))
            if row is not None:
                rows.append((read.start, read.name, read.read_number, row))
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        image = np.zeros((o.height, o.width, o.channels), dtype=np.uint8)
        image[: o.reference_band_height] = self.reference_rows(ref_window)[None]
        for i, (_, _, _, row) in enumerate(rows):
            image[o.reference_band_height + i] = row
        return image

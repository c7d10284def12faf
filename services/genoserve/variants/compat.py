"""Compare genoserve's pileups with DeepVariant's make_examples output, site by site, channel by channel.

Run: ``python -m genoserve.variants.compat --bam B --reference R --examples golden.tfrecord.gz
--region chr20:10000000-10010000`` prints a JSON report (``--per-site`` adds every site).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from genoserve.core.errors import GenoserveError
from genoserve.variants.examples import CHANNELS_6, CHANNELS_7, PileupExample, read_examples
from genoserve.variants.make_examples import Region, make_examples


@dataclass
class SiteAgreement:
    locus: str
    alleles: str
    alt_allele_indices: list[int]
    found: bool
    identical: bool = False
    pixel_agreement: float = 0.0
    rows_golden: int = 0
    rows_ours: int = 0
    downsampled: bool = False
    #: Read rows (whole rows compared, order ignored) only in DeepVariant's image / only in ours:
    #: a read drawn elsewhere (realigned differently), missing or extra.
    rows_only_golden: int = 0
    rows_only_ours: int = 0
    #: Same rows, different order (e.g. a realigned read moved its start).
    rows_reordered: bool = False
    channels_differing: list[str] = field(default_factory=list)


@dataclass
class CompatReport:
    golden_examples: int
    our_examples: int
    matched_examples: int
    identical_examples: int
    identical_examples_without_downsampling: int
    examples_without_downsampling: int
    pixel_agreement: float
    channel_agreement: dict[str, float]
    sites: list[SiteAgreement] = field(default_factory=list)


def _key(e: PileupExample) -> tuple[int, str, tuple[str, ...], tuple[int, ...]]:
    return (e.start, e.reference_bases, tuple(e.alternate_bases), e.alt_allele_indices)


def _rows(image: npt.NDArray[np.uint8], band: int = 5) -> int:
    return int((image[band:].reshape(image.shape[0] - band, -1).max(axis=1) > 0).sum())


def _row_set(image: npt.NDArray[np.uint8], band: int = 5) -> list[bytes]:
    return [image[i].tobytes() for i in range(band, image.shape[0]) if image[i].any()]


def _explain(site: SiteAgreement, golden: npt.NDArray[np.uint8], mine: npt.NDArray[np.uint8], names: list[str]) -> None:
    """Which rows and channels make two images differ."""
    g_rows, o_rows = _row_set(golden), _row_set(mine)
    g_count: dict[bytes, int] = {}
    for row in g_rows:
        g_count[row] = g_count.get(row, 0) + 1
    common = 0
    for row in o_rows:
        if g_count.get(row, 0) > 0:
            g_count[row] -= 1
            common += 1
    site.rows_only_golden = len(g_rows) - common
    site.rows_only_ours = len(o_rows) - common
    site.rows_reordered = site.rows_only_golden == site.rows_only_ours == 0 and g_rows != o_rows
    differ = (golden != mine).any(axis=(0, 1))
    site.channels_differing = [n for n, d in zip(names, differ.tolist(), strict=True) if d]


def compare(golden: list[PileupExample], ours: list[PileupExample]) -> CompatReport:
    """Agreement of ``ours`` with ``golden`` (matched by position, alleles and alt indices)."""
    by_key = {_key(e): e for e in ours}
    channels = CHANNELS_7 if golden and golden[0].image.shape[2] == 7 else CHANNELS_6
    sites: list[SiteAgreement] = []
    equal_sum = np.zeros(len(channels))
    pixels = 0
    for g in golden:
        alleles = f"{g.reference_bases}>{','.join(g.alternate_bases)}"
        mine = by_key.get(_key(g))
        site = SiteAgreement(g.locus, alleles, list(g.alt_allele_indices), mine is not None)
        site.rows_golden = _rows(g.image)
        if mine is not None and mine.image.shape == g.image.shape:
            equal = mine.image == g.image
            equal_sum += equal.sum(axis=(0, 1))
            pixels += equal.shape[0] * equal.shape[1]
            site.identical = bool(equal.all())
            site.pixel_agreement = float(equal.mean())
            site.rows_ours = _rows(mine.image)
            if not site.identical:
                _explain(site, g.image, mine.image, list(channels))
        site.downsampled = site.rows_golden >= 95 or max(site.rows_ours, mine.call.dp if mine else 0) > 95
        sites.append(site)
    plain = [s for s in sites if not s.downsampled]
    return CompatReport(
        golden_examples=len(golden),
        our_examples=len(ours),
        matched_examples=sum(s.found for s in sites),
        identical_examples=sum(s.identical for s in sites),
        identical_examples_without_downsampling=sum(s.identical for s in plain),
        examples_without_downsampling=len(plain),
        pixel_agreement=float(equal_sum.sum() / (pixels * len(channels))) if pixels else 0.0,
        channel_agreement={c: float(v / pixels) if pixels else 0.0 for c, v in zip(channels, equal_sum, strict=True)},
        sites=sites,
    )


def run(
    bam: str | Path, reference: str | Path, examples: str | Path, region: Region, realign: bool = True
) -> CompatReport:
    """Build pileups for ``region`` and compare them with the make_examples file ``examples``."""
    golden = list(read_examples(examples))
    channels = golden[0].image.shape[2] if golden else 7
    _, ours = make_examples(bam, reference, region, channels=channels, realign=realign)
    return compare(golden, ours)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bam", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--examples", required=True, help="DeepVariant make_examples TFRecord (calling mode)")
    parser.add_argument("--region", required=True, help="the region make_examples ran on, e.g. chr20:10000000-10010000")
    parser.add_argument("--per-site", action="store_true", help="every site, with the rows and channels that differ")
    parser.add_argument("--no-realign", action="store_true", help="use the BAM's alignments as they are")
    args = parser.parse_args(argv)
    try:
        report = run(args.bam, args.reference, args.examples, Region.parse(args.region), realign=not args.no_realign)
    except GenoserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    out = asdict(report)
    if not args.per_site:
        out.pop("sites")
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

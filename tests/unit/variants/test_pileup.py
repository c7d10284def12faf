"""Candidates and pileups: hand-made reads for each channel encoding, and the golden comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.variants import compat
from genoserve.variants.candidates import alt_allele_sets, count_alleles, find_candidates
from genoserve.variants.make_examples import Region, make_examples
from genoserve.variants.pileup import PileupEncoder, PileupOptions
from genoserve.variants.reads import OP_D, OP_I, OP_M, OP_S, Read

DATA = Path(__file__).resolve().parents[2] / "data" / "deepvariant"
BAM = DATA / "NA12878_S1.chr20.10_10p1mb.bam"
REF = DATA / "ucsc.hg19.chr20.unittest.fasta.gz"
GOLDEN = DATA / "golden.calling_examples.tfrecord.gz"


def _read(name: str, start: int, seq: str, cigar: list[tuple[int, int]], q: int = 30, **kw: object) -> Read:
    length = sum(n for op, n in cigar if op in (OP_M, OP_D))
    return Read(
        key=f"{name}/0",
        name=name,
        read_number=0,
        start=start,
        end=start + length,
        cigar=cigar,
        seq=seq,
        quals=np.full(len(seq), q, dtype=np.uint8),
        mapping_quality=int(kw.get("mq", 60)),  # type: ignore[call-overload]
        reverse=bool(kw.get("reverse", False)),
        fragment_length=int(kw.get("tlen", 300)),  # type: ignore[call-overload]
    )


def test_channel_encodings_by_hand() -> None:
    options = PileupOptions(height=8, width=5, channels=7)
    encoder = PileupEncoder(options)
    ref = "ACGTA"  # window starts at 100; variant at 102 (the centre column)
    reads = [
        _read("b", 100, "ACTTA", [(OP_M, 5)], q=20, mq=30, reverse=True, tlen=-500),
        _read("a", 101, "CGGT", [(OP_M, 2), (OP_I, 1), (OP_M, 1)]),  # insertion after 102
        _read("c", 100, "TACG", [(OP_S, 1), (OP_M, 2), (OP_D, 1), (OP_M, 1)]),  # deletion of 102
    ]
    image = encoder.encode(102, ref, reads, {"b/0": 1})
    assert image.shape == (8, 5, 7)
    np.testing.assert_array_equal(image[0, :, 0], [250, 30, 180, 100, 250])  # reference band bases
    np.testing.assert_array_equal(image[0, 0], [250, 254, 254, 70, 152, 50, 254])
    # Rows sorted by start, then name: b (100), c (100), a (101).
    b, c, a = image[5], image[6], image[7]
    np.testing.assert_array_equal(b[:, 0], [250, 30, 100, 100, 250])
    assert b[0, 1] == int(254 * 20 / 40)
    assert b[0, 2] == int(254 * 30 / 60)
    assert b[0, 3] == 240
    assert b[0, 4] == 254
    assert b[0, 6] == int(254 * 500 / 1000)
    np.testing.assert_array_equal(b[:, 5], [50, 50, 254, 50, 50])  # C>T differs at column 2
    # Insertion: drawn as "*" (0) on its anchor column with the inserted base's quality, differs.
    np.testing.assert_array_equal(a[:, 0], [0, 30, 0, 100, 0])
    assert a[2, 5] == 254
    assert a[2, 4] == 152
    # Deletion: "*" on the anchor (column 1), the deleted column blank, the soft clip not drawn.
    np.testing.assert_array_equal(c[:, 0], [250, 0, 0, 180, 0])
    assert (image[:5, :, 4] == 152).all()


def test_low_quality_base_at_the_call_drops_the_read() -> None:
    encoder = PileupEncoder(PileupOptions(height=6, width=3, channels=6))
    read = _read("r", 10, "ACG", [(OP_M, 3)], q=9)
    image = encoder.encode(11, "ACG", [read], {})
    assert image.shape == (6, 3, 6)
    assert not image[5:].any()


def test_allele_counting_and_candidate_thresholds() -> None:
    ref = "AAAAACAAAAA"
    snv = [_read(f"r{i}", 0, "AAAAATAAAAA", [(OP_M, 11)]) for i in range(2)]
    other = [_read("d", 0, "AAAAAAAAAA", [(OP_M, 2), (OP_D, 1), (OP_M, 8)])]  # a deletion and C>A
    plain = [_read(f"s{i}", 0, ref, [(OP_M, 11)]) for i in range(14)]
    # 2 of 17 reads = 0.118 < 0.12: no SNV candidate; a single-read deletion is below 2 reads.
    assert find_candidates(count_alleles(snv + other + plain, "c", ref, 0), ref, 0, 0, 11) == []
    # 2 of 16 = 0.125 >= 0.12.
    candidates = find_candidates(count_alleles(snv + other + plain[1:], "c", ref, 0), ref, 0, 0, 11)
    assert [(c.start, c.reference_bases, c.alternate_bases) for c in candidates] == [(5, "C", ["T"])]
    [site] = candidates
    assert site.allele_depths == [13, 2]
    assert site.depth == 16
    assert site.support[0] == {"r0/0", "r1/0"}
    assert alt_allele_sets(1) == [(0,)]
    assert alt_allele_sets(2) == [(0,), (1,), (0, 1)]


def test_multi_allelic_deletions_share_the_longest_reference() -> None:
    ref = "ACACACGT"
    reads = [_read(f"x{i}", 0, "ACGT", [(OP_M, 2), (OP_D, 4), (OP_M, 2)]) for i in range(3)]
    reads += [_read(f"y{i}", 0, "ACACGT", [(OP_M, 2), (OP_D, 2), (OP_M, 4)]) for i in range(3)]
    [site] = find_candidates(count_alleles(reads, "c", ref, 0), ref, 0, 0, 8)
    assert (site.start, site.reference_bases) == (1, "CACAC")
    assert sorted(site.alternate_bases) == ["C", "CAC"]


def test_an_insertion_opening_a_read_supports_the_insertion() -> None:
    """AlleleCounter::GetPrevBase: an indel at read offset 0 takes the base before it from the
    reference, so a realigned read that starts with its insertion (e.g. 5I96M) still supports it."""
    ref = "ACGTACGTACGTACGT"
    reads = [_read(f"m{i}", 2, "GTAGGCACGTACGT", [(OP_M, 2), (OP_I, 4), (OP_M, 8)]) for i in range(3)]
    reads.append(_read("lead", 4, "AGGCACGTACGT", [(OP_I, 4), (OP_M, 8)]))
    [site] = find_candidates(count_alleles(reads, "c", ref, 0), ref, 0, 0, 16)
    assert (site.start, site.reference_bases, site.alternate_bases) == (3, "T", ["TAGGC"])
    assert "lead/0" in site.support[0]
    # A deletion opening a read counts the same way.
    dels = [_read(f"d{i}", 2, "GTGTACGT", [(OP_M, 2), (OP_D, 2), (OP_M, 6)]) for i in range(3)]
    dels.append(_read("dlead", 4, "GTACGT", [(OP_D, 2), (OP_M, 6)]))
    [site] = find_candidates(count_alleles(dels, "c", ref, 0), ref, 0, 0, 16)
    assert (site.start, site.reference_bases, site.alternate_bases) == (3, "TAC", ["T"])
    assert "dlead/0" in site.support[0]


def test_region_parsing() -> None:
    assert Region.parse("chr20:10,000,001-10,010,000") == Region("chr20", 10_000_000, 10_010_000)
    with pytest.raises(InvalidArgument, match="CONTIG:START-END"):
        Region.parse("chr20")
    with pytest.raises(InvalidArgument):
        Region.parse("chr20:5-1")


def test_contig_naming_mismatch_is_named() -> None:
    with pytest.raises(InvalidArgument, match="'20'"):
        make_examples(BAM, REF, Region("20", 10_000_000, 10_000_100))


def test_golden_pileup_agreement() -> None:
    """Measured against DeepVariant 1.9's own calling examples for chr20:10,000,000-10,010,000.

    With the local realigner (on by default, as in make_examples) all 84 images are pixel for
    pixel DeepVariant's (31 without it, by an earlier approximation).
    """
    report = compat.run(BAM, REF, GOLDEN, Region.parse("chr20:10000000-10010000"))
    assert report.golden_examples == 84
    assert report.matched_examples == 84  # same site, alleles and alt indices
    assert report.identical_examples == 84  # pixel-identical images
    assert report.pixel_agreement == 1.0
    assert min(report.channel_agreement.values()) == 1.0
    assert report.our_examples == 84  # and no example DeepVariant does not make
    assert all(site.identical and not site.downsampled for site in report.sites)
    first = report.sites[0]
    assert first.locus == "chr20:10000117-10000117"
    assert first.identical


def test_compat_cli_bad_reference_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = compat.main(["--bam", str(BAM), "--reference", str(BAM.parent), "--examples", str(GOLDEN),
                        "--region", "chr20:10000000-10000100"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot open indexed FASTA" in err
    assert err.count("\n") == 1

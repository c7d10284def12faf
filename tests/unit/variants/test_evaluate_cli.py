"""``python -m genoserve.variants.evaluate`` as the README runs it: VCF positions, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pysam
import pytest

from genoserve.variants.evaluate import main

DATA = Path(__file__).resolve().parents[2] / "data" / "deepvariant"
TRUTH = DATA / "test_nist.b37_chr20_100kbp_at_10mb.vcf.gz"
BED = DATA / "test_nist.b37_chr20_100kbp_at_10mb.bed"
REF = DATA / "ucsc.hg19.chr20.unittest.fasta.gz"
REGION = "chr20:10000000-10010000"


def test_missed_truth_site_is_reported_at_its_vcf_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = tmp_path / "calls.vcf"
    with pysam.VariantFile(str(TRUTH)) as truth, pysam.VariantFile(str(calls), "w", header=truth.header) as out:
        records = list(truth.fetch("chr20", 9_999_999, 10_010_000))
        # The T>G the README names as missed at 10,001,019 (a confident truth SNP).
        dropped = next(r for r in records if r.pos == 10_001_019)
        for record in records:
            if record.pos != dropped.pos:
                out.write(record)
    code = main(["--calls", str(calls), "--truth", str(TRUTH), "--confident", str(BED), "--reference", str(REF),
                 "--regions", REGION])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["SNP"]["fn"] == 1
    assert report["false_negatives"] == [
        {"contig": "chr20", "pos": dropped.pos, "ref": dropped.ref, "alt": dropped.alts[0]}
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--calls": "missing.vcf.gz"}, "--calls missing.vcf.gz: no such file"),
        ({"--regions": "chr20:10000000"}, "'chr20:10000000': expected CONTIG:START-END"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    change: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {"--calls": str(TRUTH), "--truth": str(TRUTH), "--reference": str(REF), "--regions": REGION} | change
    code = main([item for pair in args.items() for item in pair])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_bed_with_spaces_is_read_and_a_bad_line_is_named(tmp_path: Path) -> None:
    from genoserve.core.errors import InvalidArgument
    from genoserve.variants.evaluate import read_bed

    bed = tmp_path / "regions.bed"
    bed.write_text("track name=x\nchr20 10 20\nchr20\t30\t40\tname\n")
    assert read_bed(bed) == {"chr20": [(10, 20), (30, 40)]}
    bed.write_text("chr20\t10\t20\nchr20\t40\t30\n")
    with pytest.raises(InvalidArgument, match="line 2: expected CONTIG START END with 0 <= START < END"):
        read_bed(bed, "params[bed]")

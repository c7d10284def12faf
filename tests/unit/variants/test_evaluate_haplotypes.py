"""Haplotype-aware matching in the evaluation: representation differences a user would see as
false FP/FN pairs under allele matching alone (MNP vs SNPs, complex alleles, repeats)."""

from __future__ import annotations

import json
from pathlib import Path

import pysam
import pytest

from genoserve.variants.evaluate import Evaluation, GenotypedSite, evaluate, main
from genoserve.variants.haplotypes import Site, compare

#            0         1         2         3         4         5
#            0123456789012345678901234567890123456789012345678901234567
REFERENCE = "TTGACCTGAAGTCGATGCCAGTACACACACAGGTTCAAGCTTAGCGGATCCGATCG"
HET, HOM = (0, 1), (1, 1)


def fetch(contig: str, start: int, end: int) -> str:
    return REFERENCE[start:end]


def site(pos: int, ref: str, alt: str, genotype: tuple[int, ...] = HET) -> GenotypedSite:
    assert REFERENCE[pos : pos + len(ref)] == ref, (pos, ref)
    return GenotypedSite("chr1", pos, (ref, alt), genotype)


def run(calls: list[GenotypedSite], truth: list[GenotypedSite], distance: int = 20) -> Evaluation:
    return evaluate(calls, truth, fetch, cluster_distance=distance)


def test_mnp_matches_the_two_snps_it_is_made_of_both_ways() -> None:
    mnp = site(10, "GT", "CA")
    snps = [site(10, "G", "C"), site(11, "T", "A")]
    alleles_only = run(snps, [mnp], distance=0)
    assert (alleles_only.indel.fn, alleles_only.snp.fp) == (1, 2)  # what allele matching alone says
    result = run(snps, [mnp])
    assert (result.indel.tp, result.indel.fn, result.indel.haplotype_tp, result.indel.genotype_matches) == (1, 0, 1, 1)
    assert (result.snp.query_tp, result.snp.fp, result.snp.precision) == (2, 0, 1.0)
    assert not result.false_positives
    assert not result.false_negatives
    reverse = run([mnp], snps)
    assert (reverse.snp.tp, reverse.snp.fn, reverse.snp.recall) == (2, 0, 1.0)
    assert (reverse.indel.query_tp, reverse.indel.fp) == (1, 0)


def test_indel_in_a_repeat_matches_wherever_it_is_placed() -> None:
    # AC repeat at 22..30: deleting one unit at its left or its right end is the same haplotype.
    left = site(21, "TAC", "T")
    right = site(28, "ACA", "A")
    result = run([right], [left])
    assert (result.indel.tp, result.indel.fp, result.indel.fn) == (1, 0, 0)
    # Combined with a SNP next to the repeat, as one complex record on the call side.
    truth = [left, site(31, "G", "A")]
    complex_call = site(28, "ACAG", "AA")  # deletes the last CA and turns G31 into A
    result = run([complex_call], truth)
    assert (result.indel.tp, result.snp.tp, result.indel.fp) == (1, 1, 0)
    assert result.indel.haplotype_tp + result.snp.haplotype_tp == 2


def test_complex_allele_matches_a_deletion_and_a_snp() -> None:
    truth = [site(37, "AGCT", "A"), site(42, "A", "T")]  # delete GCT, then A42 -> T
    call = site(37, "AGCTTA", "ATT")
    result = run([call], truth)
    assert (result.indel.tp, result.snp.tp) == (1, 1)
    assert (result.indel.query_tp, result.indel.fp) == (1, 0)
    assert not result.false_negatives


def test_a_real_difference_stays_a_false_positive_and_a_false_negative() -> None:
    mnp = site(10, "GT", "CA")
    result = run([site(10, "G", "C")], [mnp])  # half the MNP
    assert (result.indel.fn, result.snp.fp) == (1, 1)
    wrong = run([site(37, "AGCTTA", "ATG")], [site(37, "AGCT", "A"), site(42, "A", "T")])
    assert (wrong.indel.tp, wrong.snp.fn, wrong.indel.fp) == (0, 1, 1)


def test_wrong_zygosity_matches_alleles_but_not_genotype() -> None:
    mnp = site(10, "GT", "CA", HOM)
    result = run([site(10, "G", "C"), site(11, "T", "A")], [mnp])
    assert (result.indel.tp, result.indel.genotype_matches) == (1, 0)
    # Two hets that must sit on different haplotypes cannot be a hom MNP, nor a het one with an
    # extra SNP elsewhere in the cluster; the matched part is still found (largest subset).
    extra = run([site(10, "G", "C"), site(11, "T", "A"), site(15, "T", "C")], [site(10, "GT", "CA")])
    assert (extra.indel.tp, extra.snp.query_tp, extra.snp.fp) == (1, 2, 1)
    assert [(a.pos, a.alt) for a in extra.false_positives] == [(15, "C")]


def test_phasing_is_enumerated_for_unphased_hets() -> None:
    # Two het SNPs vs two het SNPs written as a het MNP plus nothing: on one haplotype only.
    segment = REFERENCE[8:14]
    pair = [Site(10, ("G", "C"), HET), Site(11, ("T", "A"), HET)]
    assert compare([Site(10, ("GT", "CA"), HET)], pair, segment, 8) == "genotype"
    # A hom SNP and a het SNP vs a het MNP: the hom base is on both haplotypes; alleles only.
    hom_het = [Site(10, ("G", "C"), HOM), Site(11, ("T", "A"), HET)]
    assert compare([Site(10, ("GT", "CA"), HET)], hom_het, segment, 8) == "allele"
    assert compare([Site(10, ("GT", "CA"), HET)], [Site(10, ("GT", "CC"), HET)], segment, 8) is None


def test_cli_counts_an_mnp_against_two_truth_snps_on_the_real_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = Path(__file__).resolve().parents[2] / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
    with pysam.FastaFile(str(reference)) as fasta:
        bases = fasta.fetch("chr20", 10_000_199, 10_000_201).upper()
        length = fasta.get_reference_length("chr20")
    other = {"A": "C", "C": "G", "G": "T", "T": "A"}
    header = pysam.VariantHeader()
    header.contigs.add("chr20", length=length)
    header.formats.add("GT", 1, "String", "Genotype")
    header.add_sample("S")
    files = {}
    for name, records in {
        "truth": [(10_000_200, bases[0], other[bases[0]]), (10_000_201, bases[1], other[bases[1]])],
        "calls": [(10_000_200, bases, other[bases[0]] + other[bases[1]])],
    }.items():
        path = tmp_path / f"{name}.vcf"
        with pysam.VariantFile(str(path), "w", header=header) as vcf:
            for pos, ref, alt in records:
                record = vcf.new_record(contig="chr20", start=pos - 1, alleles=(ref, alt))
                record.samples["S"]["GT"] = (0, 1)
                vcf.write(record)
        files[name] = path
    args = ["--calls", str(files["calls"]), "--truth", str(files["truth"]), "--reference", str(reference)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["SNP"]["tp"], report["SNP"]["fn"], report["SNP"]["haplotype_tp"]) == (2, 0, 2)
    assert (report["INDEL"]["query_tp"], report["INDEL"]["fp"]) == (1, 0)
    assert main([*args, "--cluster-distance", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["SNP"]["fn"], report["INDEL"]["fp"]) == (2, 1)

"""Postprocessing against DeepVariant's golden postprocess_variants input/output, and VCF writing."""

from __future__ import annotations

from pathlib import Path

import pysam
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.nucleus.variants_pb2 import CallVariantsOutput
from genoserve.variants.examples import CallInfo, call_info
from genoserve.variants.postprocess import ExampleCall, PostprocessOptions, call_site, postprocess, simplify_alleles
from genoserve.variants.tfrecord import read_records
from genoserve.variants.vcf import write_vcf

DATA = Path(__file__).resolve().parents[2] / "data" / "deepvariant"


def golden_inputs() -> list[ExampleCall]:
    out = []
    for data in read_records(DATA / "golden.postprocess_single_site_input-00000-of-00001.tfrecord.gz"):
        cvo = CallVariantsOutput.FromString(data)
        v = cvo.variant
        info, sample = call_info(v)
        p = tuple(cvo.genotype_probabilities)
        out.append(
            ExampleCall(
                v.reference_name,
                v.start,
                v.end,
                v.reference_bases,
                list(v.alternate_bases),
                tuple(cvo.alt_allele_indices.indices),
                (p[0], p[1], p[2]),
                info,
                sample,
            )
        )
    return out


def test_golden_postprocess_output_is_reproduced_record_for_record(tmp_path: Path) -> None:
    calls = postprocess(golden_inputs())
    out = write_vcf(tmp_path / "calls.vcf", calls, [("chr20", 63025520)], "NA12878")
    ours = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    golden_text = (DATA / "golden.postprocess_single_site_output.vcf").read_text()
    golden = [line for line in golden_text.splitlines() if not line.startswith("#")]
    assert len(golden) == 78
    assert ours == golden  # every column: alleles, QUAL, FILTER, GT, GQ, DP, AD, VAF, PL


def test_multi_allelic_merge_prunes_and_trims() -> None:
    calls = {c.start + 1: c for c in postprocess(golden_inputs())}
    pruned = calls[10008758]  # C -> AA,CA: AA's own QUAL < 1, so it is pruned
    assert (pruned.reference_bases, pruned.alternate_bases, pruned.genotype) == ("C", ["CA"], (1, 1))
    assert pruned.ad == [1, 23]
    both = calls[10002458]
    assert both.alternate_bases == ["GTT", "GTTT"]
    assert both.genotype == (1, 2)
    assert len(both.pl) == 6
    assert simplify_alleles(["CAA", "CA", "CAAA"]) == ["CA", "C", "CAA"]


def test_filters_refcall_lowqual_nocall() -> None:
    def site(p: tuple[float, float, float], ad: list[int]) -> ExampleCall:
        return ExampleCall("chr1", 9, 10, "A", ["G"], (0,), p, CallInfo(sum(ad), ad, [0.5]), "S")

    ref = call_site([site((0.999, 0.0005, 0.0005), [30, 1])])
    assert ref.filters == ["RefCall"]
    assert ref.genotype == (0, 0)
    assert ref.gq == 30
    weak_ref = call_site([site((0.9, 0.05, 0.05), [30, 1])])
    assert weak_ref.filters == ["RefCall"]
    assert weak_ref.genotype == (-1, -1)  # GQ 10 < 20
    low = call_site([site((0.3, 0.69, 0.01), [5, 5])])
    assert low.filters == ["PASS"]
    assert low.quality == pytest.approx(5.23, abs=0.01)
    lowqual = call_site([site((0.45, 0.5, 0.05), [5, 5])], PostprocessOptions(qual_filter=5.0))
    assert lowqual.filters == ["LowQual"]
    assert lowqual.genotype == (0, 1)
    nocall = call_site([site((0.1, 0.8, 0.1), [0, 0])])
    assert nocall.filters == ["NoCall"]
    assert nocall.genotype == (-1, -1)
    capped = call_site([site((0.0, 0.0, 1.0), [0, 40])])
    assert capped.gq == 99
    assert capped.quality == pytest.approx(99.03, abs=0.01)
    assert capped.pl == [99, 99, 0]  # GL floored at log10(1.25e-10)


def test_incomplete_multi_allelic_set_is_invalid() -> None:
    first = golden_inputs()
    site = [e for e in first if e.start + 1 == 10002458][:2]  # alt 1 and alt 2 but no pair
    with pytest.raises(InvalidArgument, match="alt_allele_indices"):
        call_site(site)


def test_bgzipped_vcf_is_tabix_indexed_and_queryable(tmp_path: Path) -> None:
    calls = postprocess(golden_inputs())
    path = write_vcf(tmp_path / "calls.vcf.gz", calls, [("chr20", 63025520)], "NA12878")
    assert (tmp_path / "calls.vcf.gz.tbi").exists()
    with pysam.VariantFile(str(path)) as vcf:
        assert list(vcf.header.samples) == ["NA12878"]
        assert set(vcf.header.filters) >= {"PASS", "RefCall", "LowQual", "NoCall"}
        records = list(vcf.fetch("chr20", 10002000, 10003000))
    assert [r.pos for r in records] == [10002058, 10002099, 10002138, 10002142, 10002458, 10002470, 10002493, 10002625]

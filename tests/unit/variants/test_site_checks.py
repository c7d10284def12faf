"""One example's site, alleles and read counts are checked the same way wherever examples come from
(make_examples tf.Examples here; request fields in tests/unit/api), and grouping and calling a site
never builds the product of its alt alleles from one example."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pysam
import pytest

from genoserve.core.errors import InvalidArgument
from genoserve.variants.examples import PileupExample, parse_example, read_examples, serialize_example, to_variant
from genoserve.variants.postprocess import ExampleCall, call_site, postprocess
from genoserve.variants.sites import SiteBuffer
from genoserve.variants.vcf import write_vcf
from tests.support.tf_examples import tf_example as _tf
from tests.support.tf_examples import with_shape as _shape

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"
WHERE = "examples[3].tf_example"


@pytest.fixture(scope="module")
def golden() -> PileupExample:
    return next(iter(read_examples(GOLDEN)))


def _peak_mib(work: Callable[[], Any]) -> float:
    """Peak Python allocation while ``work`` runs, in MiB."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _call(alts: list[str], indices: tuple[int, ...], p: tuple[float, float, float] = (0.1, 0.8, 0.1)) -> ExampleCall:
    return ExampleCall("chr1", 99, 100, "A", alts, indices, p)


MANY = [f"A{'C' * i}" for i in range(1, 2001)]  # 2,000 distinct alts


def test_site_buffer_does_not_enumerate_alt_sets_per_example() -> None:
    buffer = SiteBuffer()
    # Before: each add built every alt and alt-pair set (2,001,000 tuples here, ~200 MiB).
    assert _peak_mib(lambda: buffer.add("big", _call(MANY, (0,)))) < 8
    assert [ids for _, ids in buffer.leftovers()] == [["big"]]


def test_site_buffer_completes_a_site_once_every_alt_and_pair_is_in() -> None:
    buffer = SiteBuffer()
    alts = ["C", "G", "T"]
    order = [(0,), (1, 2), (1,), (0, 1), (2,)]
    assert all(buffer.add(str(i), _call(alts, s)) == [] for i, s in enumerate(order))
    with pytest.raises(InvalidArgument, match=r"already has an example for alt_allele_indices \[1, 2\]"):
        buffer.add("again", _call(alts, (1, 2)))
    with pytest.raises(InvalidArgument, match="alt_allele_indices"):
        buffer.add("outside", _call(alts, (3,)))
    [group] = buffer.add("last", _call(alts, (0, 2)))
    assert [i for i, _ in group] == ["0", "1", "2", "3", "4", "last"]
    assert buffer.leftovers() == []


def test_one_example_of_a_multi_allelic_site_is_refused_boundedly() -> None:
    # Before: called from its 3 probabilities as if complete (a PL of 3 values for 3 alleles, which
    # write_vcf then failed on: pysam wants 6), after building the genotype order of every allele.
    with pytest.raises(InvalidArgument, match=r"do not cover the 2 alts as DeepVariant does .*3 examples, got 1"):
        call_site([_call(["C", "G"], (0,))])
    errors: list[InvalidArgument] = []

    def run() -> None:
        try:
            call_site([_call(MANY, (0,))])
        except InvalidArgument as exc:
            errors.append(exc)

    assert _peak_mib(run) < 8
    assert "2001000 examples, got 1" in errors[0].message


def test_a_complete_multi_allelic_site_writes_a_vcf_record(tmp_path: Path) -> None:
    alts = ["C", "G", "T"]
    group = [_call(alts, s, (0.05, 0.05, 0.9) if s == (0, 1) else (0.3, 0.4, 0.3)) for s in
             [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]]  # fmt: skip
    [call] = postprocess(group)
    assert len(call.pl) == 10  # (n+1)(n+2)/2 genotypes for n = 3 alts
    write_vcf(tmp_path / "x.vcf", [call], [("chr1", 1000)], "S")
    with pysam.VariantFile(str(tmp_path / "x.vcf")) as vcf:
        [record] = list(vcf)
    assert (record.alts, len(record.samples[0]["PL"])) == (("C", "G", "T"), 10)


def test_an_incomplete_many_alt_site_is_refused_without_listing_every_pair() -> None:
    group = [_call(MANY, (0,)), _call(MANY, (1,))]
    errors: list[InvalidArgument] = []

    def run() -> None:
        try:
            postprocess(group)
        except InvalidArgument as exc:
            errors.append(exc)

    assert _peak_mib(run) < 8
    assert "2001000 examples" in errors[0].message  # 2,000 alts + 1,999,000 pairs
    assert len(errors[0].message) < 1000


def _info(example: PileupExample, key: str, value: float) -> Callable[[Any], None]:
    def edit(feature: Any) -> None:
        variant = to_variant(example)
        values = variant.calls[0].info[key].values
        values[0].Clear()
        values[0].number_value = value
        feature["variant/encoded"].bytes_list.value[0] = variant.SerializeToString()

    return edit


def _cases(g: PileupExample) -> Iterator[tuple[str, bytes, str, str]]:
    """(case, tf.Example bytes, field named, rule) for each broken tf.Example."""
    var = f"{WHERE} variant/encoded"
    yield "chrom empty", _tf(replace(g, reference_name="")), f"{var} reference_name", "is required"
    yield "pos -4", _tf(replace(g, start=-5, end=-4)), f"{var} start", "must be >= 0 (0-based), got -5"
    yield "ref empty", _tf(replace(g, reference_bases="", end=g.start)), f"{var} reference_bases", "A/C/G/T/N"
    yield "ref xyzé", _tf(replace(g, reference_bases="xyzé", end=g.start + 4)), f"{var} reference_bases", "'xyzé'"
    yield "alt is ref", _tf(replace(g, alternate_bases=[g.reference_bases])), f"{var} alternate_bases", "equals REF"
    two = replace(g, alternate_bases=["T", "T"])
    yield "alt twice", _tf(two), f"{var} alternate_bases", "repeats alternate_bases[0]"
    yield "end", _tf(replace(g, end=g.end + 3)), f"{var} end", f"must be start + len(REF) = {g.end}"
    yield "shape -1", _tf(g, _shape([-1, 221, 7])), f"{WHERE} image/shape", "each must be >= 1"
    yield "shape -,-", _tf(g, _shape([-100, -221, 7])), f"{WHERE} image/shape", "each must be >= 1"
    huge = _shape([2**40, 2**40, 7], b"")
    yield "shape 2**40", _tf(g, huge), f"{WHERE} image/shape", "does not match 0 bytes of image/encoded"
    yield "shape 2 dims", _tf(g, _shape([100, 1547])), f"{WHERE} image/shape", "need 3 values"
    yield "label empty", _tf(g, lambda f: f["label"].int64_list.SetInParent()), f"{WHERE} label", "one int64"
    dp, ad, vaf = (f"{var} calls[0].info[{k}]" for k in ("DP", "AD", "VAF"))
    for value in (math.nan, math.inf, -3.0, 2.5, 1e12):  # 1e12: past the response's int32
        rule = f"must be a whole number >= 0 and <= 2147483647, got {value}"
        yield f"DP {value}", _tf(g, _info(g, "DP", value)), dp, rule
        yield f"AD {value}", _tf(g, _info(g, "AD", value)), ad, rule
    yield "VAF nan", _tf(g, _info(g, "VAF", math.nan)), vaf, "must be in [0, 1], got nan"


def test_broken_tf_examples_are_invalid_argument_naming_the_part_and_rule(golden: PileupExample) -> None:
    for case, data, field, rule in _cases(golden):
        with pytest.raises(InvalidArgument) as info:
            parse_example(data, WHERE)
        assert [v.field for v in info.value.violations] == [field], case
        assert rule in info.value.message, (case, info.value.message)


def test_tf_example_alt_count_is_capped_before_anything_else(golden: PileupExample) -> None:
    data = _tf(replace(golden, alternate_bases=["C"] * 50_000, call=replace(golden.call, ad=[], vaf=[])))
    with pytest.raises(InvalidArgument) as info:
        parse_example(data, WHERE, max_alts=32)
    assert info.value.violations[0].field == f"{WHERE} variant/encoded alternate_bases"
    assert "at most 32 alt alleles per site" in info.value.message
    assert "got 50000" in info.value.message
    assert parse_example(_tf(golden), WHERE, max_alts=1).alternate_bases == ["T"]


def test_golden_examples_pass_every_check() -> None:
    examples = list(read_examples(GOLDEN))
    assert len(examples) == 84
    again = [parse_example(serialize_example(e), "x", max_alts=2) for e in examples]
    assert [(e.locus, e.alternate_bases, e.call) for e in again] == [
        (e.locus, e.alternate_bases, e.call) for e in examples
    ]

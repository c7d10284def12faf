"""CallVariants examples are checked before any work, with the same rules whether they come as
request fields or as tf.Examples: a bad example gets its own error, naming the field and the rule,
and the others in the request are still decoded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from genoserve.api.codecs import variants as codec
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings, SettingsError, load_settings
from genoserve.v1 import variants_pb2
from genoserve.variants.examples import PileupExample, read_examples, serialize_example

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"
LIMIT = Settings().variants.max_alts_per_site


@pytest.fixture(scope="module")
def golden() -> list[PileupExample]:
    return list(read_examples(GOLDEN))[:3]


def _decode(messages: list[variants_pb2.PileupExample], max_alts: int = LIMIT) -> codec.DecodedExamples:
    return codec.examples(messages, "", max_alts=max_alts)


def _fields(example: PileupExample, edit: Callable[[variants_pb2.PileupExample], None]) -> variants_pb2.PileupExample:
    message = codec.pileup_example(example, "bad")
    edit(message)
    return message


def _tf(example: PileupExample) -> variants_pb2.PileupExample:
    return variants_pb2.PileupExample(id="bad", tf_example=serialize_example(example))


def _set(**values: object) -> Callable[[variants_pb2.PileupExample], None]:
    def edit(message: variants_pb2.PileupExample) -> None:
        for name, value in values.items():
            if isinstance(value, list):
                getattr(message, name)[:] = value
            else:
                setattr(message, name, value)

    return edit


#: (case, request-fields edit, tf.Example change, field under examples[1] / its tf_example, rule)
CASES = [
    ("chrom empty", _set(chrom=""), {"reference_name": ""}, ("chrom", "reference_name"), "is required"),
    ("pos -4", _set(pos=-4), {"start": -5, "end": -4}, ("pos", "start"), "must be >= "),
    ("ref empty", _set(ref=""), {"reference_bases": ""}, ("ref", "reference_bases"), "must be non-empty A/C/G/T/N"),
    ("ref xyzé", _set(ref="xyzé"), {"reference_bases": "xyzé"}, ("ref", "reference_bases"), "got 'xyzé'"),
    ("alt is ref", _set(alts=["C"]), {"alternate_bases": ["C"]}, ("alts", "alternate_bases"), "'C' equals REF"),
    ("no alts", _set(alts=[]), {"alternate_bases": []}, ("alts", "alternate_bases"), "at least one alt"),
    ("bad alt", _set(alts=["T", "Q"]), {"alternate_bases": ["T", "Q"]}, ("alts", "alternate_bases"), "got 'Q'"),
    ("alt twice", _set(alts=["T", "t"]), {"alternate_bases": ["T", "T"]}, ("alts", "alternate_bases"), "repeats"),
]


@pytest.mark.parametrize(("case", "edit", "change", "names", "rule"), CASES, ids=[c[0] for c in CASES])
def test_fields_and_tf_examples_break_the_same_rule_alone(
    golden: list[PileupExample],
    case: str,
    edit: Callable[[variants_pb2.PileupExample], None],
    change: dict[str, object],
    names: tuple[str, str],
    rule: str,
) -> None:
    g = golden[0]
    tf_change = dict(change)
    if "reference_bases" in tf_change:
        tf_change["end"] = g.start + len(str(tf_change["reference_bases"]))
    if "alternate_bases" in tf_change:
        tf_change["call"] = replace(g.call, ad=[], vaf=[])
    for bad, field in (
        (_fields(g, edit), f"examples[1].{names[0]}"),
        (_tf(replace(g, **tf_change)), f"examples[1].tf_example variant/encoded {names[1]}"),  # type: ignore[arg-type]
    ):
        decoded = _decode([codec.pileup_example(golden[1], "a"), bad, _tf(golden[2])])
        before, item, after = decoded.items
        assert item.row is None
        assert item.error is not None
        assert (item.error.field, rule in item.error.message) == (field, True), item.error.message
        assert (before.row, after.row) == (0, 1)  # the others still answer
        assert decoded.images.shape[0] == 2


@pytest.mark.parametrize("how", ["fields", "tf_example"])
def test_too_many_alts_is_that_examples_error_naming_the_limit(golden: list[PileupExample], how: str) -> None:
    alts = ["C"] * 50_000  # the 172 KB request that grew a server to 22.8 GB
    if how == "fields":
        bad = _fields(golden[0], _set(alts=alts, allele_depths=[]))
        field = "examples[0].alts"
    else:
        bad = _tf(replace(golden[0], alternate_bases=alts, call=replace(golden[0].call, ad=[], vaf=[])))
        field = "examples[0].tf_example variant/encoded alternate_bases"
    decoded = _decode([bad, codec.pileup_example(golden[1])])
    error = decoded.items[0].error
    assert error is not None
    assert error.field == field
    assert f"at most {LIMIT} alt alleles per site (setting variants.max_alts_per_site), got 50000" in error.message
    assert decoded.items[1].row == 0
    three = _fields(golden[0], _set(alts=["T", "G", "A"], alt_allele_indices=[0], allele_depths=[]))
    assert _decode([three], max_alts=3).items[0].error is None
    assert "at most 2 alt" in str(_decode([three], max_alts=2).items[0].error)


def test_read_counts_must_be_counts(golden: list[PileupExample]) -> None:
    bad_depth = _fields(golden[0], _set(depth=-3))
    bad_ad = _fields(golden[0], _set(allele_depths=[25, -1]))
    short_ad = _fields(golden[0], _set(allele_depths=[25]))
    # The response's depth is an int32: a sum past it was an INTERNAL error when the call was made.
    big_sum = _fields(golden[0], _set(depth=0, allele_depths=[2**31 - 1, 2]))
    items = _decode([bad_depth, bad_ad, short_ad, big_sum, codec.pileup_example(golden[1])]).items
    errors = [(i.error.field, i.error.message) for i in items[:4] if i.error is not None]
    assert errors == [
        ("examples[0].depth", "examples[0].depth: must be a whole number >= 0 and <= 2147483647, got -3"),
        (
            "examples[1].allele_depths",
            "examples[1].allele_depths: must be a whole number >= 0 and <= 2147483647, got -1",
        ),
        ("examples[2].allele_depths", "examples[2].allele_depths: need 2 values (REF first), got 1"),
        (
            "examples[3].allele_depths",
            "examples[3].allele_depths: sum 2147483649 (the depth, as depth is 0) must be <= 2147483647",
        ),
    ]
    assert items[4].row == 0


def test_a_broken_tf_example_is_its_own_error(golden: list[PileupExample]) -> None:
    data = bytearray(serialize_example(golden[0]))
    label = variants_pb2.PileupExample(id="x", tf_example=serialize_example(replace(golden[0], label=1)))
    decoded = _decode([variants_pb2.PileupExample(id="cut", tf_example=bytes(data[:-7])), label])
    assert decoded.items[0].error is not None
    assert decoded.items[0].error.field == "examples[0].tf_example"
    assert decoded.items[1].row == 0


def test_max_alts_setting_default_and_bounds() -> None:
    assert LIMIT == 32
    assert load_settings(env={"GENOSERVE_VARIANTS__MAX_ALTS_PER_SITE": "4"}).variants.max_alts_per_site == 4
    with pytest.raises(SettingsError, match=r"variants\.max_alts_per_site"):
        load_settings(env={"GENOSERVE_VARIANTS__MAX_ALTS_PER_SITE": "0"})


def test_layout_errors_still_fail_the_whole_request(golden: list[PileupExample]) -> None:
    bad = codec.pileup_example(golden[0])
    bad.pileup.shape[:] = [221, 100, 7]
    with pytest.raises(InvalidArgument, match=r"examples\[0\]\.pileup"):
        _decode([bad])


def test_errors_echo_a_bounded_part_of_what_was_sent(golden: list[PileupExample]) -> None:
    # An error's message travels in gRPC metadata (16 KiB at most): a long value is cut, not echoed.
    edits = [
        _set(ref="X" * 100_000),
        _set(alts=["T", "Q" * 100_000]),
        _set(chrom=" " * 100_000),
        _set(alt_allele_indices=list(range(100_000))),
    ]
    for edit in edits:
        error = _decode([_fields(golden[0], edit)]).items[0].error
        assert error is not None
        assert len(error.message) < 200, error.message
    assert "(100000 characters)" in str(_decode([_fields(golden[0], edits[0])]).items[0].error)

"""TFRecord framing, CRC-32C and DeepVariant's golden make_examples output decoded into numpy."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from genoserve.variants import tfrecord
from genoserve.variants.examples import PileupExample, parse_example, read_examples, write_examples
from genoserve.variants.tfrecord import RecordError, crc32c, masked_crc32c, read_records, write_records

DATA = Path(__file__).resolve().parents[2] / "data" / "deepvariant"
GOLDEN = DATA / "golden.calling_examples.tfrecord.gz"


def test_crc32c_check_value_and_long_inputs_agree_with_the_plain_loop() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C "check" value (RFC 3720 B.4)
    assert crc32c(b"") == 0
    data = os.urandom(50_000)
    plain = tfrecord._scalar_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc32c(data) == plain
    assert crc32c(data[1000:], crc32c(data[:1000])) == plain  # continuation


def test_masked_crc_matches_the_header_tensorflow_wrote() -> None:
    header = gzip.decompress(GOLDEN.read_bytes())[:12]  # first record of a file TensorFlow wrote
    assert masked_crc32c(header[:8]) == int.from_bytes(header[8:12], "little")


@pytest.mark.parametrize("name", ["r.tfrecord", "r.tfrecord.gz"])
def test_write_then_read_round_trip(tmp_path: Path, name: str) -> None:
    records = [b"", b"a", os.urandom(10_000)]
    assert write_records(tmp_path / name, records) == 3
    assert list(read_records(tmp_path / name)) == records


def test_corrupt_and_truncated_files_name_the_record(tmp_path: Path) -> None:
    path = tmp_path / "r.tfrecord"
    write_records(path, [b"first", b"second"])
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF  # a byte of the second record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match=r"record 1 .*data CRC mismatch"):
        list(read_records(path))
    path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(RecordError, match=r"record 1 .*truncated"):
        list(read_records(path))
    gz = tmp_path / "broken.tfrecord.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:-10])
    with pytest.raises(RecordError, match="r"):
        list(read_records(gz))


def test_golden_calling_examples_decode() -> None:
    examples = list(read_examples(GOLDEN))
    assert len(examples) == 84
    first = examples[0]
    assert (first.reference_name, first.start, first.end) == ("chr20", 10000116, 10000117)
    assert (first.reference_bases, first.alternate_bases, first.alt_allele_indices) == ("C", ["T"], (0,))
    assert first.locus == "chr20:10000117-10000117"
    assert (first.call.dp, first.call.ad) == (55, [25, 30])
    assert first.sample_name == "NA12878"
    for example in examples:
        assert example.image.shape == (100, 221, 7)
        assert example.image.dtype == np.uint8
    # Reference band: base colours of the reference at the centre column, BQ/MQ 254, strand 70.
    centre = first.image[:5, 110]
    np.testing.assert_array_equal(centre, np.tile([30, 254, 254, 70, 152, 50, 254], (5, 1)))
    # Multi-allelic sites give one example per alt and one for the pair.
    site = [e.alt_allele_indices for e in examples if e.start == 10002457]
    assert site == [(0,), (1,), (0, 1)]


def test_examples_round_trip_through_a_tfrecord(tmp_path: Path) -> None:
    examples = list(read_examples(GOLDEN))[:5]
    assert write_examples(tmp_path / "x.tfrecord.gz", examples) == 5
    again = list(read_examples(tmp_path / "x.tfrecord.gz"))
    for a, b in zip(examples, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert (a.locus, a.alternate_bases, a.alt_allele_indices, a.call) == (
            b.locus,
            b.alternate_bases,
            b.alt_allele_indices,
            b.call,
        )


def test_a_record_that_is_not_an_example_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "bad.tfrecord"
    good = next(read_records(GOLDEN))
    write_records(path, [good, b"\xff\xff\xff"])
    with pytest.raises(Exception, match=r"record 1"):
        list(read_examples(path))
    with pytest.raises(Exception, match="missing feature"):
        parse_example(b"", "x")
    assert isinstance(parse_example(good), PileupExample)

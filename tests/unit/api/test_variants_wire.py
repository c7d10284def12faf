"""CallVariants requests around protobuf's copies: what the client sends parses as the same message
protobuf would make, and the server's parser agrees with protobuf on every encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from genoserve.api.codecs import variants as codec
from genoserve.api.codecs.wire import field_header, split_field
from genoserve.v1 import tensor_pb2, variants_pb2
from genoserve.variants.examples import PileupExample, read_examples

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"


@pytest.fixture(scope="module")
def golden() -> list[PileupExample]:
    return list(read_examples(GOLDEN))[:5]


def test_encoded_request_is_the_message_protobuf_would_build(golden: list[PileupExample]) -> None:
    data = codec.encode_call_request(golden, model="m", sample_name="S")
    message = variants_pb2.CallVariantsRequest.FromString(data)
    assert (message.model, message.sample_name, len(message.examples)) == ("m", "S", 5)
    assert list(message.pileups.shape) == [5, 100, 221, 7]
    assert message.pileups.dtype == tensor_pb2.DATA_TYPE_UINT8
    assert message.pileups.data == np.stack([e.image for e in golden]).tobytes()
    assert message.examples[0].pos == golden[0].start + 1
    assert not message.examples[0].HasField("pileup")


def test_server_parser_keeps_the_pixels_in_the_received_bytes(golden: list[PileupExample]) -> None:
    data = codec.encode_call_request(golden)
    parsed = codec.parse_call_request(data)
    assert isinstance(parsed.pileups_data, memoryview)
    assert parsed.pileups is not None
    assert parsed.pileups.data == b""  # the pixels were not copied into the message
    decoded = codec.examples(parsed.message.examples, "", parsed.pileups, parsed.pileups_data, max_alts=32)
    assert np.array_equal(decoded.images, np.stack([e.image for e in golden]))
    assert np.shares_memory(decoded.images, np.frombuffer(data, np.uint8))  # zero-copy


def test_any_field_order_and_per_example_messages_parse_as_protobuf_does(golden: list[PileupExample]) -> None:
    message = codec.call_request(golden, model="m")
    fields = [
        variants_pb2.CallVariantsRequest(pileups=message.pileups).SerializeToString(),
        variants_pb2.CallVariantsRequest(model="m", examples=message.examples).SerializeToString(),
    ]
    reordered = codec.parse_call_request(b"".join(fields))  # pileups first
    assert reordered.message.model == "m"
    assert reordered.pileups is not None
    assert bytes(reordered.pileups_data or b"") == message.pileups.data
    per_example = variants_pb2.CallVariantsRequest(examples=[codec.pileup_example(e) for e in golden])
    data = per_example.SerializeToString()
    split = split_field(data, 5)
    assert split is not None
    assert split[0] is data  # no pileups field: the message bytes are not copied
    parsed = codec.parse_call_request(data)
    assert parsed.pileups is None
    assert parsed.message == per_example


def test_unusual_encodings_fall_back_to_protobuf() -> None:
    twice = b"".join(
        variants_pb2.CallVariantsRequest(pileups=tensor_pb2.Tensor(shape=[n], data=bytes(n))).SerializeToString()
        for n in (2, 3)
    )
    assert split_field(twice, 5) is None  # a message field given twice merges: protobuf's business
    parsed = codec.parse_call_request(twice)
    assert parsed.pileups is not None
    assert list(parsed.pileups.shape) == [2, 3]
    assert split_field(field_header(5, 10) + b"\x01", 5) is None  # truncated
    with pytest.raises(DecodeError):
        codec.parse_call_request(field_header(5, 10) + b"\x01")
    empty = codec.parse_call_request(b"")
    assert (empty.pileups, len(empty.message.examples)) == (None, 0)

"""Embed requests around protobuf's copies: what the client sends is the message protobuf would
build, and the server's zero-copy parser agrees with protobuf on every encoding, falling back to
protobuf's parser for unusual ones (fields repeated, both csr and dense, truncation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from google.protobuf.message import DecodeError

from genoserve.api.codecs import embedding as codec
from genoserve.api.codecs.embedding import ParsedEmbedRequest, compact, encode_embed_request, parse_embed_request
from genoserve.api.codecs.tensor import from_numpy, to_numpy
from genoserve.api.codecs.wire import field_header, take_fields, take_first
from genoserve.core.errors import InvalidArgument
from genoserve.embedding.counts import CsrCounts
from genoserve.v1 import embedding_pb2

GENES = [f"G{i}" for i in range(6)]


@pytest.fixture
def csr() -> sp.csr_matrix:
    return sp.random(5, 6, density=0.4, format="csr", dtype=np.float32, random_state=np.random.default_rng(3))


def canonical(parsed: ParsedEmbedRequest) -> tuple[Any, ...]:
    """What the servicer sees: the message without the values, and the values' arrays."""
    message = embedding_pb2.EmbedRequest()
    message.CopyFrom(parsed.message)
    message.counts.ClearField("csr")
    message.counts.ClearField("dense")
    arrays: dict[str, Any] = {}
    for name, tensor in parsed.tensors.items():
        try:
            array = tensor.decode(name)
            arrays[name] = (array.dtype.str, array.shape, array.tobytes())
        except InvalidArgument as exc:
            arrays[name] = exc.message
    return message.SerializeToString(deterministic=True), parsed.values, arrays


def protobufs(data: bytes) -> tuple[Any, ...]:
    return canonical(ParsedEmbedRequest.of(embedding_pb2.EmbedRequest.FromString(data)))


def test_client_encoding_is_the_message_protobuf_would_build(csr: sp.csr_matrix) -> None:
    ids = [f"c{i}" for i in range(5)]
    data = encode_embed_request("m", GENES, csr, cell_ids=ids, batch_labels=["b"], min_gene_overlap=0.5,
                                not_raw_counts=True, return_variances=True, version="2")  # fmt: skip
    message = embedding_pb2.EmbedRequest.FromString(data)
    assert (message.model, message.version, list(message.batch_labels)) == ("m", "2", ["b"])
    assert (message.min_gene_overlap, message.not_raw_counts, message.return_variances) == (0.5, True, True)
    assert list(message.counts.gene_names) == GENES
    assert list(message.counts.cell_ids) == ids
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(to_numpy(getattr(message.counts.csr, name), name), getattr(csr, name))
    dense = np.arange(12, dtype=np.int64).reshape(2, 6)
    message = embedding_pb2.EmbedRequest.FromString(encode_embed_request("m", GENES, dense))
    np.testing.assert_array_equal(to_numpy(message.counts.dense, "dense"), dense)


def test_server_parser_leaves_the_values_in_the_received_bytes(csr: sp.csr_matrix) -> None:
    data = encode_embed_request("m", GENES, csr, cell_ids=[f"c{i}" for i in range(5)])
    parsed = parse_embed_request(data)
    assert canonical(parsed) == protobufs(data)
    matrix = codec.counts(parsed)
    assert isinstance(matrix, CsrCounts)
    received = np.frombuffer(data, np.uint8)
    for name in ("indptr", "indices", "data"):
        assert np.shares_memory(getattr(matrix, name), received), name  # zero-copy
    assert list(parsed.message.counts.gene_names) == GENES
    dense = parse_embed_request(encode_embed_request("m", GENES, csr.toarray()))
    assert dense.values == "dense"
    np.testing.assert_array_equal(codec.counts(dense), csr.toarray())


def test_protobuf_field_order_parses_the_same(csr: sp.csr_matrix) -> None:
    """Another client's encoding (protobuf writes fields in number order: the names first)."""
    message = embedding_pb2.EmbedRequest.FromString(encode_embed_request("m", GENES, csr, cell_ids=["a"] * 5))
    data = message.SerializeToString()
    assert data != encode_embed_request("m", GENES, csr, cell_ids=["a"] * 5)
    parsed = parse_embed_request(data)
    assert canonical(parsed) == protobufs(data)
    assert np.shares_memory(codec.counts(parsed).data, np.frombuffer(data, np.uint8))  # type: ignore[union-attr]


def test_unusual_encodings_get_protobufs_semantics(csr: sp.csr_matrix) -> None:
    one = encode_embed_request("m", GENES, csr)
    names_apart = embedding_pb2.EmbedRequest(
        counts=embedding_pb2.CountMatrix(cell_ids=["x"] * 5)
    ).SerializeToString()  # counts given twice: protobuf merges the two messages
    dense_too = embedding_pb2.EmbedRequest(
        counts=embedding_pb2.CountMatrix(dense=from_numpy(np.ones((5, 6), np.float32)))
    ).SerializeToString()  # csr, then dense: the oneof's last member wins
    indptr_twice = embedding_pb2.EmbedRequest(
        counts=embedding_pb2.CountMatrix(csr=embedding_pb2.CsrMatrix(indptr=from_numpy(np.zeros(6, np.int32))))
    ).SerializeToString()
    for data in (one + names_apart, one + dense_too, one + indptr_twice, names_apart + one):
        assert canonical(parse_embed_request(data)) == protobufs(data)
    assert parse_embed_request(one + dense_too).values == "dense"
    assert list(parse_embed_request(one + names_apart).message.counts.cell_ids) == ["x"] * 5
    empty = parse_embed_request(b"")
    assert (empty.values, empty.message.HasField("counts")) == (None, False)
    only_names = parse_embed_request(embedding_pb2.EmbedRequest(counts=embedding_pb2.CountMatrix(gene_names=GENES))
                                     .SerializeToString())  # fmt: skip
    assert only_names.values is None
    assert list(only_names.message.counts.gene_names) == GENES
    with pytest.raises(DecodeError):
        parse_embed_request(one[:-1])  # truncated in the head's last field
    with pytest.raises(DecodeError):
        parse_embed_request(field_header(3, 100) + b"\x01")


def test_take_fields_and_take_first() -> None:
    message = embedding_pb2.CountMatrix(gene_names=["a", "b"], csr=embedding_pb2.CsrMatrix()).SerializeToString()
    rest, payloads = take_fields(message, (3,)) or (b"", {})
    assert embedding_pb2.CountMatrix.FromString(rest) == embedding_pb2.CountMatrix(gene_names=["a", "b"])
    assert bytes(payloads[3]) == b""
    assert take_fields(message + message, (3,)) is None  # twice: protobuf's business
    assert take_fields(message, (4,)) == (message, {})
    rest2, number, payload = take_first(message + message, (3, 4)) or (b"", None, None)
    assert number == 3
    assert payload is not None
    assert embedding_pb2.CountMatrix.FromString(rest2).HasField("csr")  # the second one: the caller's check
    assert take_first(b"\x0b", (3,)) is None  # a group (wire type 3): not plain
    assert take_first(field_header(1, 9) + b"ab", (3,)) is None  # truncated


def test_compact_is_exact_or_leaves_the_values_alone() -> None:
    counts = np.array([0, 1, 7, 65535], np.float32)
    assert compact(counts).dtype == np.uint16
    np.testing.assert_array_equal(compact(counts), counts)
    assert compact(np.arange(5, dtype=np.int64)).dtype == np.uint16
    # Anything uint16 cannot hold exactly goes as it is, so the server names the bad value itself.
    for bad in ([1.0, np.nan], [1.0, np.inf], [2.5, 1.0], [-1.0, 2.0], [65536.0, 1.0]):
        values = np.array(bad, np.float32)
        assert compact(values) is values
    assert compact(np.array([-3, 4], np.int32)).dtype == np.int32
    for dtype in (np.int32, np.int64, np.uint32, np.uint64):  # integers: a range check
        edge = np.array([0, 65535, 12], dtype)
        assert compact(edge).dtype == np.uint16
        np.testing.assert_array_equal(compact(edge), edge)
        over = np.array([3, 65536], dtype)
        assert compact(over) is over
    empty = np.zeros(0, np.int32)
    assert compact(empty) is empty
    assert compact(np.array([1, 2], np.uint8)).dtype == np.uint8  # already small

"""genoserve.v1 embedding messages <-> the embedding family's arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genoserve.api.codecs import wire
from genoserve.api.codecs.tensor import Placer, RawTensor, RegionReader, from_numpy, raw_tensor, tensor_parts
from genoserve.core.errors import InvalidArgument
from genoserve.embedding.counts import Counts, CsrCounts
from genoserve.embedding.genes import SHOWN_MISSING, GeneAlignment
from genoserve.v1 import embedding_pb2

Array = np.ndarray[Any, Any]


_COUNTS = embedding_pb2.EmbedRequest.COUNTS_FIELD_NUMBER
_CSR = embedding_pb2.CountMatrix.CSR_FIELD_NUMBER
_DENSE = embedding_pb2.CountMatrix.DENSE_FIELD_NUMBER
_CSR_PARTS = {
    "indptr": embedding_pb2.CsrMatrix.INDPTR_FIELD_NUMBER,
    "indices": embedding_pb2.CsrMatrix.INDICES_FIELD_NUMBER,
    "data": embedding_pb2.CsrMatrix.DATA_FIELD_NUMBER,
}


@dataclass(frozen=True)
class ParsedEmbedRequest:
    """An EmbedRequest as the server parses it: the message without the matrix values (its
    ``counts`` keeps gene names and cell ids), and the values' tensors, their data zero-copy views
    of the received bytes (see ``genoserve.api.codecs.wire``). ``values``: "csr", "dense" or None;
    ``tensors``: indptr/indices/data for csr, dense for dense."""

    message: embedding_pb2.EmbedRequest
    values: str | None = None
    tensors: Mapping[str, RawTensor] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, message: embedding_pb2.EmbedRequest) -> ParsedEmbedRequest:
        """From a message protobuf parsed whole (each tensor's data copied out once)."""
        which = message.counts.WhichOneof("values")
        if which == "dense":
            return cls(message, which, {"dense": RawTensor.of(message.counts.dense)})
        if which == "csr":
            csr = message.counts.csr
            return cls(message, which, {name: RawTensor.of(getattr(csr, name)) for name in _CSR_PARTS})
        return cls(message)


def parse_embed_request(data: bytes) -> ParsedEmbedRequest:
    """The gRPC request deserializer for Embed(Stream): the matrix values are not copied. Any
    encoding but the plain one (a field given twice, both csr and dense, ...) goes to protobuf."""
    taken = wire.take_first(data, (_COUNTS,))
    if taken is None:
        return ParsedEmbedRequest.of(embedding_pb2.EmbedRequest.FromString(data))
    rest, _, counts_payload = taken
    message = embedding_pb2.EmbedRequest.FromString(rest)
    if counts_payload is None:
        return ParsedEmbedRequest(message)
    inner = wire.take_first(counts_payload, (_CSR, _DENSE))
    if message.HasField("counts") or inner is None:  # counts given twice (protobuf merges) or unusual
        return ParsedEmbedRequest.of(embedding_pb2.EmbedRequest.FromString(data))
    matrix_rest, which, values = inner
    message.counts.MergeFromString(matrix_rest)
    if which is None or values is None:
        return ParsedEmbedRequest(message)
    if message.counts.WhichOneof("values") is not None:  # values given twice, or csr and dense
        return ParsedEmbedRequest.of(embedding_pb2.EmbedRequest.FromString(data))
    if which == _DENSE:
        return ParsedEmbedRequest(message, "dense", {"dense": raw_tensor(values)})
    parts = wire.take_fields(values, _CSR_PARTS.values())
    if parts is None:
        return ParsedEmbedRequest.of(embedding_pb2.EmbedRequest.FromString(data))
    payloads = parts[1]
    return ParsedEmbedRequest(
        message, "csr", {name: raw_tensor(payloads.get(number, b"")) for name, number in _CSR_PARTS.items()}
    )


def encode_embed_request(
    model: str,
    gene_names: Sequence[str],
    counts: Any,
    cell_ids: Sequence[str] = (),
    batch_labels: Sequence[str] = (),
    min_gene_overlap: float = 0.0,
    not_raw_counts: bool = False,
    return_variances: bool = False,
    version: str = "",
    shared: Placer | None = None,
) -> bytes:
    """A serialized EmbedRequest for a CSR matrix (``indptr``/``indices``/``data`` attributes) or
    a dense array, each array copied once into the result (not by protobuf), or with ``shared``
    into shared memory. The matrix values come first, so the server's parser finds them without
    scanning the names; on the channel, counts and column indices go as uint16 where that is exact
    (``compact``; in shared memory they go as given, which the server converts for free)."""
    head = embedding_pb2.EmbedRequest(
        model=model, version=version, batch_labels=list(batch_labels), min_gene_overlap=min_gene_overlap,
        not_raw_counts=not_raw_counts, return_variances=return_variances,
    ).SerializeToString()  # fmt: skip
    names = embedding_pb2.CountMatrix(gene_names=list(gene_names), cell_ids=list(cell_ids)).SerializeToString()
    if all(hasattr(counts, a) for a in _CSR_PARTS):
        arrays = {number: np.asarray(getattr(counts, name)) for name, number in _CSR_PARTS.items()}
        if shared is None:
            arrays[_CSR_PARTS["indices"]] = compact(arrays[_CSR_PARTS["indices"]])
            arrays[_CSR_PARTS["data"]] = compact(arrays[_CSR_PARTS["data"]])
        parts = [p for number, a in arrays.items() for p in wire.field(number, tensor_parts(a, shared))]
        values = wire.field(_CSR, parts)
    else:
        dense = np.asarray(counts)
        values = wire.field(_DENSE, tensor_parts(dense if shared is not None else compact(dense), shared))
    return b"".join([*wire.field(_COUNTS, [*values, names]), head])


def compact(values: Array) -> Array:
    """``values`` as uint16 when that holds every one exactly (whole numbers in [0, 65535]: raw
    counts, gene column indices), so half or less of the bytes cross the wire; else as given, so
    that the server judges (and names) any bad value itself."""
    if values.dtype.kind not in "iuf" or values.dtype.itemsize <= 2 or values.size == 0:
        return values
    if values.dtype.kind in "iu":  # a range check is exact for integers, and 3x cheaper than comparing
        return values.astype(np.uint16) if values.min() >= 0 and values.max() <= 65535 else values
    with np.errstate(invalid="ignore"):  # NaN/inf cast to some integer: the comparison rejects them
        small = values.astype(np.uint16)
    return small if np.array_equal(small, values) else values


def counts(request: ParsedEmbedRequest, field: str = "counts", shared: RegionReader | None = None) -> Counts:
    """The CSR or dense matrix of a request (arrays are read-only views of the received bytes, or
    of shared memory read through ``shared``)."""
    if request.values is None:
        raise InvalidArgument.field(field, "give the counts as csr or dense")
    if request.values == "dense":
        return request.tensors["dense"].decode(f"{field}.dense", shared)
    arrays = {name: request.tensors[name].decode(f"{field}.csr.{name}", shared) for name in _CSR_PARTS}
    for name in ("indptr", "indices"):
        if request.tensors[name].header.HasField("shared_memory"):
            # The client could change shared memory after the checks; scipy's C++ trusts the
            # structure it is given, so the server checks and uses a private copy of it.
            arrays[name] = arrays[name].copy()
    return CsrCounts(
        **arrays,
        n_genes=len(request.message.counts.gene_names),
    )


def gene_overlap(alignment: GeneAlignment) -> embedding_pb2.GeneOverlap:
    return embedding_pb2.GeneOverlap(
        model_genes=alignment.n_model_genes, matched=alignment.matched, extra=alignment.extra,
        fraction=alignment.overlap, missing_genes=list(alignment.missing[:SHOWN_MISSING]),
        missing_count=len(alignment.missing),
    )  # fmt: skip


def embed_response(
    model: str, version: str, cell_ids: list[str], latent: Array, variances: Array | None, alignment: GeneAlignment
) -> embedding_pb2.EmbedResponse:
    response = embedding_pb2.EmbedResponse(
        model=model, version=version, cell_ids=cell_ids, latent=from_numpy(latent),
        gene_overlap=gene_overlap(alignment),
    )  # fmt: skip
    if variances is not None:
        response.variances.CopyFrom(from_numpy(variances))
    return response


def cell_count(parsed: ParsedEmbedRequest) -> int:
    """The cells (matrix rows) a message declares, before any check: to number cells across a
    stream's messages."""
    if parsed.values == "dense":
        shape = parsed.tensors["dense"].header.shape
        return int(shape[0]) if shape else 0
    if parsed.values == "csr":
        shape = parsed.tensors["indptr"].header.shape
        return max(int(shape[0]) - 1, 0) if shape else 0
    return 0


def inherit(first: ParsedEmbedRequest, later: ParsedEmbedRequest) -> ParsedEmbedRequest:
    """A stream message with the first message's values where it leaves them empty."""
    one, two = first.message, later.message
    merged = embedding_pb2.EmbedRequest(
        model=two.model or one.model,
        version=two.version or one.version,
        batch_labels=two.batch_labels,
        min_gene_overlap=two.min_gene_overlap or one.min_gene_overlap,
        not_raw_counts=two.not_raw_counts or one.not_raw_counts,
        return_variances=two.return_variances or one.return_variances,
    )
    merged.counts.CopyFrom(two.counts)
    if not two.counts.gene_names:
        merged.counts.gene_names.extend(one.counts.gene_names)
    return ParsedEmbedRequest(merged, later.values, later.tensors)

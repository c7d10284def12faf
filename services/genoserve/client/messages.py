"""Request building and response decoding for the clients: no channel and no calls here, so the
blocking and the asyncio client build every request and read every response the same way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import Message

from genoserve.api.codecs import tensor as tensor_codec
from genoserve.api.codecs.tensor import Placer
from genoserve.v1 import binding_pb2, embedding_pb2, jobs_pb2, models_pb2, segmentation_pb2, variants_pb2

if TYPE_CHECKING:
    from genoserve.variants.examples import PileupExample

Array = np.ndarray[Any, Any]
#: A batch of pileup examples: messages, or the variants family's ``PileupExample`` objects.
Examples = Sequence[variants_pb2.PileupExample] | Sequence["PileupExample"]
#: One EmbedStream message: ``embed_request(...)`` bytes, or a message.
EmbedMessage = bytes | embedding_pb2.EmbedRequest

STRANDS = {
    "": binding_pb2.STRAND_UNSPECIFIED,
    "forward": binding_pb2.STRAND_FORWARD,
    "max": binding_pb2.STRAND_MAX,
    "mean": binding_pb2.STRAND_MEAN,
}
FINAL_JOB_STATES = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


def infer_request(
    model: str, inputs: Mapping[str, Array], version: str, shared: Placer | None = None
) -> models_pb2.InferRequest:
    return models_pb2.InferRequest(
        model=model,
        version=version,
        inputs={name: tensor_codec.from_numpy(np.asarray(a), shared) for name, a in inputs.items()},
    )


def infer_outputs(response: models_pb2.InferResponse) -> dict[str, Array]:
    return {name: tensor_codec.to_numpy(t, f"outputs[{name}]") for name, t in response.outputs.items()}


def infer_stream_requests(
    model: str, inputs: Iterable[Mapping[str, Array]], version: str
) -> Iterator[models_pb2.InferRequest]:
    """InferStream's requests: one per mapping of inputs, ``id`` its number from 0."""
    for number, arrays in enumerate(inputs):
        request = infer_request(model, arrays, version)
        request.id = str(number)
        yield request


def segment_request(
    model: str,
    image: Array | bytes,
    channels: Sequence[int] = (),
    diameter: float = 0.0,
    cellprob_threshold: float | None = None,
    flow_threshold: float | None = None,
    min_size: int | None = None,
    niter: int | None = None,
    return_flows: bool = False,
    version: str = "",
    shared: Placer | None = None,
) -> segmentation_pb2.SegmentRequest:
    """A Segment request: ``image`` is an array [H, W] / [H, W, C] (in shared memory with
    ``shared``) or TIFF/PNG file bytes."""
    picture = (
        segmentation_pb2.Image(encoded=bytes(image))
        if isinstance(image, bytes | bytearray)
        else segmentation_pb2.Image(array=tensor_codec.from_numpy(np.asarray(image), shared))
    )
    request = segmentation_pb2.SegmentRequest(
        model=model, version=version, image=picture, channels=list(channels), diameter=diameter,
        return_flows=return_flows,
    )  # fmt: skip
    if cellprob_threshold is not None:
        request.cellprob_threshold = cellprob_threshold
    if flow_threshold is not None:
        request.flow_threshold = flow_threshold
    if min_size is not None:
        request.min_size = min_size
    if niter is not None:
        request.niter = niter
    return request


def masks_of(response: segmentation_pb2.SegmentResponse) -> Array:
    """The label mask [H, W] (uint16 or uint32) of a Segment response."""
    return tensor_codec.to_numpy(response.masks, "masks")


def embed_request(model: str, gene_names: Sequence[str], counts: Any, cell_ids: Sequence[str] = (),
                  batch_labels: Sequence[str] = (), min_gene_overlap: float = 0.0, not_raw_counts: bool = False,
                  return_variances: bool = False, version: str = "", shared: Placer | None = None
                  ) -> bytes:  # fmt: skip
    """A serialized EmbedRequest for a CSR matrix (``indptr``/``indices``/``data`` attributes, e.g.
    ``scipy.sparse.csr_matrix``) or a dense array, the arrays copied once (not by protobuf; into
    shared memory with ``shared``), for ``embed_stream``; ``embedding_pb2.EmbedRequest.FromString``
    gives the message."""
    from genoserve.api.codecs.embedding import encode_embed_request

    return encode_embed_request(model, gene_names, counts, cell_ids, batch_labels, min_gene_overlap, not_raw_counts,
                                return_variances, version, shared)  # fmt: skip


def serialized(request: bytes | Message) -> bytes:
    """Requests as bytes: as given, or serialized by protobuf."""
    return request if isinstance(request, bytes) else request.SerializeToString()


def as_is(data: bytes) -> bytes:
    return data


def variants_request(
    examples: Examples,
    model: str = "",
    version: str = "",
    sample_name: str = "",
    shared: Placer | None = None,
) -> bytes:
    """A serialized CallVariantsRequest: messages as given, or family ``PileupExample`` objects with
    all pileups in the request's one batched ``pileups`` tensor (pixels copied once, into shared
    memory with ``shared``)."""
    messages = [e for e in examples if isinstance(e, variants_pb2.PileupExample)]
    if len(messages) == len(examples):
        request = variants_pb2.CallVariantsRequest(
            model=model, version=version, examples=messages, sample_name=sample_name
        )
        return request.SerializeToString()
    from genoserve.api.codecs.variants import encode_call_request
    from genoserve.variants.examples import PileupExample as FamilyExample

    family = [e for e in examples if isinstance(e, FamilyExample)]
    if len(family) != len(examples):
        raise TypeError("examples must be all variants_pb2.PileupExample messages or all family PileupExamples")
    return encode_call_request(family, model, version, sample_name, shared=shared)


def sequences_request(model: str, sequences: Sequence[tuple[str, str]], strand: str, crop: bool,
                      version: str) -> binding_pb2.PredictRequest:  # fmt: skip
    return binding_pb2.PredictRequest(
        model=model, version=version, crop=crop, strand=STRANDS[strand],
        sequences=[binding_pb2.Sequence(id=i, bases=b) for i, b in sequences],
    )  # fmt: skip


def mutagenesis_request(model: str, sequence_id: str, bases: str, strand: str, crop: bool,
                        version: str) -> binding_pb2.MutagenesisRequest:  # fmt: skip
    return binding_pb2.MutagenesisRequest(
        model=model, version=version, crop=crop, strand=STRANDS[strand],
        sequence=binding_pb2.Sequence(id=sequence_id, bases=bases),
    )  # fmt: skip

"""Blocking and asyncio clients over one reused channel.

Deadlines on every call (``timeout``), retries on UNAVAILABLE only (gRPC's own retry policy in the
channel's service config, with exponential backoff), and server errors raised as genoserve's
error classes with the server's message and ``google.rpc.BadRequest`` field violations.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from genoserve.api.codecs import tensor as tensor_codec
from genoserve.api.codecs.tensor import Placer
from genoserve.client.shared_memory import Lease, SharedMemoryPool
from genoserve.core import errors
from genoserve.v1 import (
    binding_pb2,
    binding_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    variants_pb2,
    variants_pb2_grpc,
)

if TYPE_CHECKING:
    from genoserve.variants.examples import PileupExample

Array = np.ndarray[Any, Any]

_ERRORS: dict[str, type[errors.GenoserveError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.DeadlineExceeded,
        errors.Unavailable,
        errors.Unauthenticated,
        errors.PermissionDenied,
        errors.Cancelled,
        errors.InternalError,
    )
}


@dataclass(frozen=True)
class ClientConfig:
    """How to reach a genoserve server."""

    address: str = "localhost:50051"
    token: str | None = None
    #: TLS: on when ``tls`` or any certificate is given; ``ca_file`` verifies the server.
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Default deadline per call, in seconds.
    timeout: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    #: Attempts per call when the server answers UNAVAILABLE (1: no retry).
    max_attempts: int = 4
    #: Send the large request tensors (Infer, Segment arrays, Embed matrices,
    #: CallVariants(Stream) pileups) through POSIX shared memory instead of the channel: only
    #: for a server on this machine started with ``server.shared_memory`` (see
    #: ``genoserve.client.shared_memory``). EmbedStream and responses use the channel.
    shared_memory: bool = False

    @property
    def secure(self) -> bool:
        return self.tls or any(p is not None for p in (self.ca_file, self.cert_file, self.key_file))


def _service_config(max_attempts: int) -> str:
    """Round-robin over every address the target resolves to (a headless Kubernetes Service gives
    one per pod; the server's max connection age makes clients re-resolve), and retries on
    UNAVAILABLE when ``max_attempts`` > 1."""
    method: dict[str, Any] = {"name": [{}]}
    if max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": min(max_attempts, 5),
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]})


def _options(config: ClientConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.enable_retries", 1 if config.max_attempts > 1 else 0),
        ("grpc.service_config", _service_config(config.max_attempts)),
        ("grpc.keepalive_time_ms", 60_000),
    ]


def _credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(config.ca_file),
        private_key=read(config.key_file),
        certificate_chain=read(config.cert_file),
    )


def translate(exc: grpc.RpcError) -> errors.GenoserveError:
    """A server status as a genoserve error (InvalidArgument keeps its field violations)."""
    code = exc.code().name if isinstance(exc.code(), grpc.StatusCode) else "UNKNOWN"
    message = exc.details() or code
    violations: list[errors.FieldViolation] = []
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [errors.FieldViolation(v.field, v.description) for v in bad.field_violations]
    cls = _ERRORS.get(code, errors.GenoserveError)
    error = errors.InvalidArgument(message, violations) if cls is errors.InvalidArgument else cls(message)
    if cls is errors.GenoserveError:
        error.code = code
    return error


STRANDS = {
    "": binding_pb2.STRAND_UNSPECIFIED,
    "forward": binding_pb2.STRAND_FORWARD,
    "max": binding_pb2.STRAND_MAX,
    "mean": binding_pb2.STRAND_MEAN,
}
FINAL_JOB_STATES = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


def _metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {config.token}"),) if config.token else ()


def _infer_request(
    model: str, inputs: Mapping[str, Array], version: str, shared: Placer | None = None
) -> models_pb2.InferRequest:
    return models_pb2.InferRequest(
        model=model,
        version=version,
        inputs={name: tensor_codec.from_numpy(np.asarray(a), shared) for name, a in inputs.items()},
    )


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


def _infer_outputs(response: models_pb2.InferResponse) -> dict[str, Array]:
    return {name: tensor_codec.to_numpy(t, f"outputs[{name}]") for name, t in response.outputs.items()}


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


def _serialized(request: bytes | Message) -> bytes:
    """Requests as bytes: as given, or serialized by protobuf."""
    return request if isinstance(request, bytes) else request.SerializeToString()


def variants_request(
    examples: Sequence[variants_pb2.PileupExample] | Sequence[PileupExample],
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


def _as_is(data: bytes) -> bytes:
    return data


_CALL_VARIANTS = "/genoserve.v1.VariantCalling/CallVariants"
_CALL_VARIANTS_STREAM = "/genoserve.v1.VariantCalling/CallVariantsStream"
_EMBED = "/genoserve.v1.CellEmbedding/Embed"
_EMBED_STREAM = "/genoserve.v1.CellEmbedding/EmbedStream"


def _encoded_calls(channel: Any) -> tuple[Any, Any, Any, Any]:
    """CallVariants, CallVariantsStream, Embed and EmbedStream on a blocking or asyncio channel,
    taking requests the client encodes itself (``variants_request``: pixels copied once;
    ``embed_request``: matrix values copied once; or, for Embed, messages)."""
    return (
        channel.unary_unary(_CALL_VARIANTS, request_serializer=_as_is,
                            response_deserializer=variants_pb2.CallVariantsResponse.FromString),
        channel.stream_stream(_CALL_VARIANTS_STREAM, request_serializer=_as_is,
                              response_deserializer=variants_pb2.CallVariantsResponse.FromString),
        channel.unary_unary(_EMBED, request_serializer=_serialized,
                            response_deserializer=embedding_pb2.EmbedResponse.FromString),
        channel.stream_stream(_EMBED_STREAM, request_serializer=_serialized,
                              response_deserializer=embedding_pb2.EmbedResponse.FromString),
    )  # fmt: skip


def _lease(pool: SharedMemoryPool | None) -> AbstractContextManager[Lease | None]:
    """Shared memory for one request's tensors (None: they go on the channel)."""
    return pool.lease() if pool is not None else nullcontext()


class _Leases:
    """Shared memory for the messages of a request stream whose responses come one per message,
    in order: each message's objects are held until its response has arrived."""

    def __init__(self, pool: SharedMemoryPool | None) -> None:
        self.pool = pool
        self.held: deque[Lease] = deque()  # append/popleft: safe between gRPC's sending thread and ours

    def take(self) -> Lease | None:
        if self.pool is None:
            return None
        lease = self.pool.lease()
        self.held.append(lease)
        return lease

    def answered(self) -> None:
        if self.held:
            self.held.popleft().release()

    def release_all(self) -> None:
        while self.held:
            self.held.popleft().release()


class Client:
    """Blocking client. Reuse one instance: it holds one channel. Use as a context manager."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        self.config = ClientConfig(address=address or ClientConfig.address, **kwargs)
        options = _options(self.config)
        if self.config.secure:
            self.channel = grpc.secure_channel(self.config.address, _credentials(self.config), options)
        else:
            self.channel = grpc.insecure_channel(self.config.address, options)
        self._metadata = _metadata(self.config)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobsStub(self.channel)
        self.binding = binding_pb2_grpc.SequenceBindingStub(self.channel)
        self.variants = variants_pb2_grpc.VariantCallingStub(self.channel)
        self.segmentation = segmentation_pb2_grpc.SegmentationStub(self.channel)
        self.embedding = embedding_pb2_grpc.CellEmbeddingStub(self.channel)
        self._call_variants, self._call_variants_stream, self._embed, self._embed_stream = _encoded_calls(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.shared_memory = SharedMemoryPool() if self.config.shared_memory else None

    def _lease(self) -> AbstractContextManager[Lease | None]:
        return _lease(self.shared_memory)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout or self.config.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    def list_models(self, family: str = "", timeout: float | None = None) -> list[models_pb2.ModelInfo]:
        response = self._call(self.models.ListModels, models_pb2.ListModelsRequest(family=family), timeout)
        return list(response.models)

    def get_model(self, name: str, version: str = "", timeout: float | None = None) -> models_pb2.ModelInfo:
        info: models_pb2.ModelInfo = self._call(
            self.models.GetModel, models_pb2.GetModelRequest(name=name, version=version), timeout
        )
        return info

    def load_model(self, name: str, version: str = "", timeout: float | None = None) -> list[models_pb2.ModelInfo]:
        """Load a model (every version in the store, or ``version``) on a server whose
        ``runtime.model_control`` is explicit; the versions with their state."""
        request = models_pb2.LoadModelRequest(name=name, version=version)
        return list(self._call(self.models.Load, request, timeout).models)

    def unload_model(self, name: str, version: str = "", timeout: float | None = None) -> list[str]:
        """Stop serving a model (every version, or ``version``); returns once its running
        requests have finished. The versions unloaded."""
        request = models_pb2.UnloadModelRequest(name=name, version=version)
        return list(self._call(self.models.Unload, request, timeout).versions)

    def repository_index(self, timeout: float | None = None) -> list[models_pb2.RepositoryIndexResponse.Entry]:
        """Every model version in the server's model store, loaded or not."""
        return list(self._call(self.models.RepositoryIndex, models_pb2.RepositoryIndexRequest(), timeout).models)

    def infer(
        self, model: str, inputs: Mapping[str, Array], version: str = "", timeout: float | None = None
    ) -> dict[str, Array]:
        """Run ``model`` on ``{input name: array}`` (batch first); returns ``{output name: array}``."""
        with self._lease() as shared:
            response = self._call(self.models.Infer, _infer_request(model, inputs, version, shared), timeout)
        return _infer_outputs(response)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN for ``service`` ("" is the whole server)."""
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- sequence binding -------------------------------------------------------------------------

    def predict_sequences(self, model: str, sequences: Sequence[tuple[str, str]], strand: str = "",
                          crop: bool = False, version: str = "", timeout: float | None = None
                          ) -> binding_pb2.PredictResponse:  # fmt: skip
        """Score ``(id, bases)`` pairs; ``strand`` forward|max|mean ("" = the model's default)."""
        request = binding_pb2.PredictRequest(
            model=model, version=version, crop=crop, strand=STRANDS[strand],
            sequences=[binding_pb2.Sequence(id=i, bases=b) for i, b in sequences],
        )  # fmt: skip
        response: binding_pb2.PredictResponse = self._call(self.binding.Predict, request, timeout)
        return response

    def score_variants(self, model: str, variants: Sequence[binding_pb2.Variant], reference: str = "",
                       strand: str = "", version: str = "", timeout: float | None = None
                       ) -> binding_pb2.ScoreVariantsResponse:  # fmt: skip
        request = binding_pb2.ScoreVariantsRequest(
            model=model, version=version, reference=reference, variants=variants, strand=STRANDS[strand]
        )
        response: binding_pb2.ScoreVariantsResponse = self._call(self.binding.ScoreVariants, request, timeout)
        return response

    def mutagenesis(self, model: str, sequence_id: str, bases: str, strand: str = "", crop: bool = False,
                    version: str = "", timeout: float | None = None) -> binding_pb2.MutagenesisResponse:  # fmt: skip
        request = binding_pb2.MutagenesisRequest(
            model=model, version=version, crop=crop, strand=STRANDS[strand],
            sequence=binding_pb2.Sequence(id=sequence_id, bases=bases),
        )  # fmt: skip
        response: binding_pb2.MutagenesisResponse = self._call(self.binding.Mutagenesis, request, timeout)
        return response

    # -- segmentation ---------------------------------------------------------------------------

    def segment(self, model: str, image: Array | bytes, timeout: float | None = None,
                **options: Any) -> segmentation_pb2.SegmentResponse:  # fmt: skip
        """Segment one image (array [H, W] / [H, W, C], or TIFF/PNG bytes). ``options``: channels,
        diameter, cellprob_threshold, flow_threshold, min_size, niter, return_flows, version.
        ``masks_of(response)`` gives the label mask as an array."""
        with self._lease() as shared:
            request = segment_request(model, image, **options, shared=shared)
            response: segmentation_pb2.SegmentResponse = self._call(self.segmentation.Segment, request, timeout)
        return response

    # -- single-cell embedding --------------------------------------------------------------------

    def embed(self, model: str, gene_names: Sequence[str], counts: Any, cell_ids: Sequence[str] = (),
              batch_labels: Sequence[str] = (), min_gene_overlap: float = 0.0, not_raw_counts: bool = False,
              return_variances: bool = False, version: str = "", timeout: float | None = None
              ) -> embedding_pb2.EmbedResponse:  # fmt: skip
        """Embed a cells x genes matrix: a CSR matrix (anything with ``indptr``, ``indices``,
        ``data``, e.g. ``scipy.sparse.csr_matrix``) or a dense array. Genes are matched by name.
        ``tensor_codec.to_numpy(response.latent, "latent")`` gives float32 [n_cells, n_latent]."""
        with self._lease() as shared:
            request = embed_request(model, gene_names, counts, cell_ids, batch_labels, min_gene_overlap,
                                    not_raw_counts, return_variances, version, shared)  # fmt: skip
            response: embedding_pb2.EmbedResponse = self._call(self._embed, request, timeout)
        return response

    def embed_stream(self, requests: Iterable[bytes | embedding_pb2.EmbedRequest], timeout: float | None = None
                     ) -> Iterator[embedding_pb2.EmbedResponse]:  # fmt: skip
        """EmbedStream: one response per request (row chunk), in order; build requests with
        ``embed_request`` (later ones may leave model and gene names empty), or give messages."""
        try:
            yield from self._embed_stream(iter(requests), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    # -- jobs -----------------------------------------------------------------------------------

    def call_variants(
        self,
        examples: Sequence[variants_pb2.PileupExample] | Sequence[PileupExample],
        model: str = "",
        version: str = "",
        sample_name: str = "",
        timeout: float | None = None,
    ) -> variants_pb2.CallVariantsResponse:
        """Genotype probabilities per pileup example and the calls of complete sites.

        ``examples``: the family's ``PileupExample`` objects (numpy pileups, e.g. from
        ``make_examples`` or ``read_examples``; sent as one batched tensor, the fast path), or
        ``variants_pb2.PileupExample`` messages (``genoserve.api.codecs.variants.pileup_example``,
        or ``tf_example`` bytes). ``model`` "" picks the server's variants model for the examples'
        channel count.
        """
        with self._lease() as shared:
            request = variants_request(examples, model, version, sample_name, shared)
            response: variants_pb2.CallVariantsResponse = self._call(self._call_variants, request, timeout)
        return response

    def call_variants_stream(
        self,
        batches: Iterable[Sequence[variants_pb2.PileupExample] | Sequence[PileupExample]],
        model: str = "",
        version: str = "",
        sample_name: str = "",
        timeout: float | None = None,
    ) -> Iterator[variants_pb2.CallVariantsResponse]:
        """One response per batch, in order (multi-allelic sites may span batches). Batches are
        as ``call_variants``' ``examples``; with ``shared_memory``, each batch's pileups stay in
        shared memory until its response has arrived."""
        leases = _Leases(self.shared_memory)
        requests = (variants_request(b, model, version, sample_name, leases.take()) for b in batches)
        try:
            for response in self._call_variants_stream(requests, timeout=timeout, metadata=self._metadata):
                leases.answered()
                yield response
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            leases.release_all()

    def submit_job(
        self,
        kind: str,
        inputs: list[str],
        output_dir: str,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> jobs_pb2.Job:
        """Submit a bulk job; paths must be visible to the server (absolute paths are safest)."""
        request = jobs_pb2.SubmitJobRequest(kind=kind, inputs=inputs, output_dir=output_dir, params=params or {})
        job: jobs_pb2.Job = self._call(self.jobs.Submit, request, timeout)
        return job

    def get_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        job: jobs_pb2.Job = self._call(self.jobs.Get, jobs_pb2.GetJobRequest(id=job_id), timeout)
        return job

    def list_jobs(self, state: int = 0, limit: int = 50, timeout: float | None = None) -> list[jobs_pb2.Job]:
        response = self._call(self.jobs.List, jobs_pb2.ListJobsRequest(state=state, limit=limit), timeout)  # type: ignore[arg-type]
        return list(response.jobs)

    def cancel_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        job: jobs_pb2.Job = self._call(self.jobs.Cancel, jobs_pb2.CancelJobRequest(id=job_id), timeout)
        return job

    def watch_job(self, job_id: str, reconnect_for: float = 120.0) -> Iterator[jobs_pb2.JobEvent]:
        """Progress events until the job ends. The stream is re-attached whenever it breaks or
        ends early (server restart, a new replica); gives up after ``reconnect_for`` seconds
        without a working connection."""
        down_since: float | None = None
        while True:
            try:
                for event in self.jobs.Watch(jobs_pb2.WatchJobRequest(id=job_id), metadata=self._metadata):
                    down_since = None
                    yield event
                    if event.job.state in FINAL_JOB_STATES:
                        return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise translate(exc) from exc
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > reconnect_for:
                raise errors.Unavailable(f"lost the server for {reconnect_for:.0f} s while watching job {job_id}")
            time.sleep(0.5)

    def close(self) -> None:
        self.channel.close()
        if self.shared_memory is not None:
            self.shared_memory.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same methods as ``Client``, awaited. One channel, reused."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        self.config = ClientConfig(address=address or ClientConfig.address, **kwargs)
        options = _options(self.config)
        if self.config.secure:
            self.channel = grpc.aio.secure_channel(self.config.address, _credentials(self.config), options)
        else:
            self.channel = grpc.aio.insecure_channel(self.config.address, options)
        self._metadata = _metadata(self.config)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.variants = variants_pb2_grpc.VariantCallingStub(self.channel)
        self.segmentation = segmentation_pb2_grpc.SegmentationStub(self.channel)
        self.embedding = embedding_pb2_grpc.CellEmbeddingStub(self.channel)
        self._call_variants, self._call_variants_stream, self._embed, self._embed_stream = _encoded_calls(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.shared_memory = SharedMemoryPool() if self.config.shared_memory else None

    def _lease(self) -> AbstractContextManager[Lease | None]:
        return _lease(self.shared_memory)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout or self.config.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    async def list_models(self, family: str = "", timeout: float | None = None) -> list[models_pb2.ModelInfo]:
        response = await self._call(self.models.ListModels, models_pb2.ListModelsRequest(family=family), timeout)
        return list(response.models)

    async def get_model(self, name: str, version: str = "", timeout: float | None = None) -> models_pb2.ModelInfo:
        info: models_pb2.ModelInfo = await self._call(
            self.models.GetModel, models_pb2.GetModelRequest(name=name, version=version), timeout
        )
        return info

    async def load_model(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> list[models_pb2.ModelInfo]:
        """Load a model (every version in the store, or ``version``) on a server whose
        ``runtime.model_control`` is explicit; the versions with their state."""
        request = models_pb2.LoadModelRequest(name=name, version=version)
        return list((await self._call(self.models.Load, request, timeout)).models)

    async def unload_model(self, name: str, version: str = "", timeout: float | None = None) -> list[str]:
        """Stop serving a model (every version, or ``version``); returns once its running
        requests have finished. The versions unloaded."""
        request = models_pb2.UnloadModelRequest(name=name, version=version)
        return list((await self._call(self.models.Unload, request, timeout)).versions)

    async def repository_index(self, timeout: float | None = None) -> list[models_pb2.RepositoryIndexResponse.Entry]:
        """Every model version in the server's model store, loaded or not."""
        return list(
            (await self._call(self.models.RepositoryIndex, models_pb2.RepositoryIndexRequest(), timeout)).models
        )

    async def infer(
        self, model: str, inputs: Mapping[str, Array], version: str = "", timeout: float | None = None
    ) -> dict[str, Array]:
        with self._lease() as shared:
            response = await self._call(self.models.Infer, _infer_request(model, inputs, version, shared), timeout)
        return _infer_outputs(response)

    async def embed(self, model: str, gene_names: Sequence[str], counts: Any, cell_ids: Sequence[str] = (),
                    batch_labels: Sequence[str] = (), min_gene_overlap: float = 0.0, not_raw_counts: bool = False,
                    return_variances: bool = False, version: str = "", timeout: float | None = None
                    ) -> embedding_pb2.EmbedResponse:  # fmt: skip
        """As ``Client.embed``."""
        with self._lease() as shared:
            request = embed_request(model, gene_names, counts, cell_ids, batch_labels, min_gene_overlap,
                                    not_raw_counts, return_variances, version, shared)  # fmt: skip
            response: embedding_pb2.EmbedResponse = await self._call(self._embed, request, timeout)
        return response

    async def embed_stream(
        self,
        requests: Iterable[bytes | embedding_pb2.EmbedRequest] | AsyncIterable[bytes | embedding_pb2.EmbedRequest],
        timeout: float | None = None,
    ) -> AsyncIterator[embedding_pb2.EmbedResponse]:
        """As ``Client.embed_stream``: ``async for response in client.embed_stream(requests)``;
        ``requests`` may be a plain or an async iterable of ``embed_request(...)`` results."""
        call = self._embed_stream(requests, timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def call_variants(
        self,
        examples: Sequence[variants_pb2.PileupExample] | Sequence[PileupExample],
        model: str = "",
        version: str = "",
        sample_name: str = "",
        timeout: float | None = None,
    ) -> variants_pb2.CallVariantsResponse:
        """As ``Client.call_variants``, awaited."""
        with self._lease() as shared:
            request = variants_request(examples, model, version, sample_name, shared)
            response: variants_pb2.CallVariantsResponse = await self._call(self._call_variants, request, timeout)
        return response

    async def call_variants_stream(
        self,
        batches: Iterable[Sequence[variants_pb2.PileupExample] | Sequence[PileupExample]]
        | AsyncIterable[Sequence[variants_pb2.PileupExample] | Sequence[PileupExample]],
        model: str = "",
        version: str = "",
        sample_name: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[variants_pb2.CallVariantsResponse]:
        """As ``Client.call_variants_stream``: an async iterator of responses, one per batch, in
        order. ``batches`` may be a plain or an async iterable."""
        leases = _Leases(self.shared_memory)

        async def requests() -> AsyncIterator[bytes]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield variants_request(batch, model, version, sample_name, leases.take())
            else:
                for batch in batches:
                    yield variants_request(batch, model, version, sample_name, leases.take())

        call = self._call_variants_stream(requests(), timeout=timeout or self.config.timeout, metadata=self._metadata)
        try:
            async for response in call:
                leases.answered()
                yield response
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            leases.release_all()

    async def segment(self, model: str, image: Array | bytes, timeout: float | None = None,
                      **options: Any) -> segmentation_pb2.SegmentResponse:  # fmt: skip
        """As ``Client.segment``, awaited."""
        with self._lease() as shared:
            request = segment_request(model, image, **options, shared=shared)
            response: segmentation_pb2.SegmentResponse = await self._call(self.segmentation.Segment, request, timeout)
        return response

    async def close(self) -> None:
        await self.channel.close()
        if self.shared_memory is not None:
            self.shared_memory.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

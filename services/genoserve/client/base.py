"""What the blocking and the asyncio client share (in the manner of httpx's ``BaseClient``): the
configuration, the channel's options and credentials, the stubs, every unary call as a ``Unary``
(stub method, request, response decoding) and server errors as genoserve errors. ``Client`` and
``AsyncClient`` differ only in how they make the call."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genoserve.api.codecs.tensor import Placer
from genoserve.client import messages
from genoserve.client.messages import Array, Examples
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

R = TypeVar("R")

#: The trailer that carries a failed call's ``google.rpc.Status`` (with BadRequest details).
_STATUS_DETAILS = "grpc-status-details-bin"

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
    #: Default deadline per unary call, in seconds (streams have none unless given one).
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


def channel_options(config: ClientConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.enable_retries", 1 if config.max_attempts > 1 else 0),
        ("grpc.service_config", _service_config(config.max_attempts)),
        ("grpc.keepalive_time_ms", 60_000),
    ]


def credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(config.ca_file),
        private_key=read(config.key_file),
        certificate_chain=read(config.cert_file),
    )


def _status(exc: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` in the trailers of a failed call, blocking (a ``grpc.Call``) or
    asyncio (``grpc.aio.AioRpcError``) alike."""
    trailers = getattr(exc, "trailing_metadata", None)
    for key, value in (trailers() if callable(trailers) else None) or ():
        if key == _STATUS_DETAILS and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def translate(exc: grpc.RpcError) -> errors.GenoserveError:
    """A server status as a genoserve error (InvalidArgument keeps its field violations)."""
    code = exc.code().name if isinstance(exc.code(), grpc.StatusCode) else "UNKNOWN"
    message = exc.details() or code
    violations: list[errors.FieldViolation] = []
    status = _status(exc)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [errors.FieldViolation(v.field, v.description) for v in bad.field_violations]
    return (
        errors.InvalidArgument(message, violations) if code == errors.InvalidArgument.code else error_of(code, message)
    )


def error_of(code: str, message: str) -> errors.GenoserveError:
    """The genoserve error for a status code name and message (a stream's per-request error)."""
    cls = _ERRORS.get(code, errors.GenoserveError)
    error = cls(message)
    if cls is errors.GenoserveError:
        error.code = code
    return error


_CALL_VARIANTS = "/genoserve.v1.VariantCalling/CallVariants"
_CALL_VARIANTS_STREAM = "/genoserve.v1.VariantCalling/CallVariantsStream"
_EMBED = "/genoserve.v1.CellEmbedding/Embed"
_EMBED_STREAM = "/genoserve.v1.CellEmbedding/EmbedStream"


def _no_lease(_: Placer | None) -> None:
    return None


@dataclass(frozen=True)
class Unary(Generic[R]):
    """One unary call, built once for both clients: the stub method, the request (``build`` gets
    the shared memory lease when ``shared`` and the client has a pool, else None) and how the
    response becomes the method's result."""

    method: Any
    build: Callable[[Placer | None], Any]
    decode: Callable[[Any], R]
    #: The request's tensors may go through shared memory.
    shared: bool = False


def _plain(message: Any) -> Callable[[Placer | None], Any]:
    return lambda _: message


def _same(response: Any) -> Any:
    return response


class Leases:
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


def variant_requests(batches: Iterable[Examples], model: str, version: str, sample_name: str,
                     leases: Leases) -> Iterator[bytes]:  # fmt: skip
    """CallVariantsStream's request messages, each batch's pileups in its own lease."""
    for batch in batches:
        yield messages.variants_request(batch, model, version, sample_name, leases.take())


class Reconnect:
    """When a job's event stream may be re-attached: after a break, until ``reconnect_for``
    seconds have passed without a working connection."""

    CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    PAUSE_S = 0.5

    def __init__(self, job_id: str, reconnect_for: float) -> None:
        self.job_id = job_id
        self.reconnect_for = reconnect_for
        self.down_since: float | None = None

    def connected(self) -> None:
        self.down_since = None

    def broken(self, exc: grpc.RpcError | None = None) -> float:
        """Seconds to wait before re-attaching; raises the error when it is not a lost connection,
        Unavailable once the server has been gone for too long."""
        if exc is not None and exc.code() not in self.CODES:
            raise translate(exc) from exc
        now = time.monotonic()
        self.down_since = self.down_since or now
        if now - self.down_since > self.reconnect_for:
            raise errors.Unavailable(f"lost the server for {self.reconnect_for:.0f} s while watching job {self.job_id}")
        return self.PAUSE_S


class BaseClient:
    """The stubs on one channel (blocking or asyncio) and every unary call as a ``Unary``."""

    def __init__(self, channel: Any, config: ClientConfig) -> None:
        self.config = config
        self.channel = channel
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {config.token}"),) if config.token else ()
        )
        self.models = models_pb2_grpc.ModelsStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.binding = binding_pb2_grpc.SequenceBindingStub(channel)
        self.variants = variants_pb2_grpc.VariantCallingStub(channel)
        self.segmentation = segmentation_pb2_grpc.SegmentationStub(channel)
        self.embedding = embedding_pb2_grpc.CellEmbeddingStub(channel)
        # Calls that take requests the client encodes itself (``variants_request``: pixels copied
        # once; ``embed_request``: matrix values copied once; or, for Embed, messages).
        self._call_variants = channel.unary_unary(
            _CALL_VARIANTS, request_serializer=messages.as_is,
            response_deserializer=variants_pb2.CallVariantsResponse.FromString,
        )  # fmt: skip
        self._call_variants_stream = channel.stream_stream(
            _CALL_VARIANTS_STREAM, request_serializer=messages.as_is,
            response_deserializer=variants_pb2.CallVariantsResponse.FromString,
        )  # fmt: skip
        self._embed = channel.unary_unary(
            _EMBED, request_serializer=messages.serialized, response_deserializer=embedding_pb2.EmbedResponse.FromString
        )
        self._embed_stream = channel.stream_stream(
            _EMBED_STREAM, request_serializer=messages.serialized,
            response_deserializer=embedding_pb2.EmbedResponse.FromString,
        )  # fmt: skip
        self._health = health_pb2_grpc.HealthStub(channel)
        self.shared_memory = SharedMemoryPool() if config.shared_memory else None

    @staticmethod
    def _config(address: str | None, options: Mapping[str, Any]) -> ClientConfig:
        return ClientConfig(address=address or ClientConfig.address, **options)

    def _lease(self, rpc: Unary[Any] | None = None) -> AbstractContextManager[Lease | None]:
        """Shared memory for one request's tensors (None: they go on the channel)."""
        if self.shared_memory is None or (rpc is not None and not rpc.shared):
            return nullcontext()
        return self.shared_memory.lease()

    def _deadline(self, timeout: float | None) -> float:
        return timeout or self.config.timeout

    # -- models ---------------------------------------------------------------------------------

    def _list_models(self, family: str) -> Unary[list[models_pb2.ModelInfo]]:
        request = models_pb2.ListModelsRequest(family=family)
        return Unary(self.models.ListModels, _plain(request), lambda r: list(r.models))

    def _get_model(self, name: str, version: str) -> Unary[models_pb2.ModelInfo]:
        return Unary(self.models.GetModel, _plain(models_pb2.GetModelRequest(name=name, version=version)), _same)

    def _load_model(self, name: str, version: str) -> Unary[list[models_pb2.ModelInfo]]:
        request = models_pb2.LoadModelRequest(name=name, version=version)
        return Unary(self.models.Load, _plain(request), lambda r: list(r.models))

    def _unload_model(self, name: str, version: str) -> Unary[list[str]]:
        request = models_pb2.UnloadModelRequest(name=name, version=version)
        return Unary(self.models.Unload, _plain(request), lambda r: list(r.versions))

    def _repository_index(self) -> Unary[list[models_pb2.RepositoryIndexResponse.Entry]]:
        request = models_pb2.RepositoryIndexRequest()
        return Unary(self.models.RepositoryIndex, _plain(request), lambda r: list(r.models))

    def _infer(self, model: str, inputs: Mapping[str, Array], version: str) -> Unary[dict[str, Array]]:
        return Unary(
            self.models.Infer,
            lambda shared: messages.infer_request(model, inputs, version, shared),
            messages.infer_outputs,
            shared=True,
        )

    def _check_health(self, service: str) -> Unary[str]:
        return Unary(
            self._health.Check,
            _plain(health_pb2.HealthCheckRequest(service=service)),
            lambda r: str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)),
        )

    # -- families -------------------------------------------------------------------------------

    def _predict_sequences(self, model: str, sequences: Sequence[tuple[str, str]], strand: str, crop: bool,
                           version: str) -> Unary[binding_pb2.PredictResponse]:  # fmt: skip
        request = messages.sequences_request(model, sequences, strand, crop, version)
        return Unary(self.binding.Predict, _plain(request), _same)

    def _score_variants(self, model: str, variants: Sequence[binding_pb2.Variant], reference: str, strand: str,
                        version: str) -> Unary[binding_pb2.ScoreVariantsResponse]:  # fmt: skip
        request = binding_pb2.ScoreVariantsRequest(
            model=model, version=version, reference=reference, variants=variants, strand=messages.STRANDS[strand]
        )
        return Unary(self.binding.ScoreVariants, _plain(request), _same)

    def _mutagenesis(self, model: str, sequence_id: str, bases: str, strand: str, crop: bool,
                     version: str) -> Unary[binding_pb2.MutagenesisResponse]:  # fmt: skip
        request = messages.mutagenesis_request(model, sequence_id, bases, strand, crop, version)
        return Unary(self.binding.Mutagenesis, _plain(request), _same)

    def _segment(self, model: str, image: Array | bytes,
                 options: Mapping[str, Any]) -> Unary[segmentation_pb2.SegmentResponse]:  # fmt: skip
        return Unary(
            self.segmentation.Segment,
            lambda shared: messages.segment_request(model, image, **options, shared=shared),
            _same,
            shared=True,
        )

    def _embed_unary(self, model: str, gene_names: Sequence[str], counts: Any, cell_ids: Sequence[str],
                     batch_labels: Sequence[str], min_gene_overlap: float, not_raw_counts: bool,
                     return_variances: bool, version: str) -> Unary[embedding_pb2.EmbedResponse]:  # fmt: skip
        def build(shared: Placer | None) -> bytes:
            return messages.embed_request(model, gene_names, counts, cell_ids, batch_labels, min_gene_overlap,
                                          not_raw_counts, return_variances, version, shared)  # fmt: skip

        return Unary(self._embed, build, _same, shared=True)

    def _call_variants_unary(self, examples: Examples, model: str, version: str,
                             sample_name: str) -> Unary[variants_pb2.CallVariantsResponse]:  # fmt: skip
        return Unary(
            self._call_variants,
            lambda shared: messages.variants_request(examples, model, version, sample_name, shared),
            _same,
            shared=True,
        )

    # -- jobs -----------------------------------------------------------------------------------

    def _submit_job(self, kind: str, inputs: list[str], output_dir: str,
                    params: Mapping[str, str] | None) -> Unary[jobs_pb2.Job]:  # fmt: skip
        request = jobs_pb2.SubmitJobRequest(kind=kind, inputs=inputs, output_dir=output_dir, params=params or {})
        return Unary(self.jobs.Submit, _plain(request), _same)

    def _get_job(self, job_id: str) -> Unary[jobs_pb2.Job]:
        return Unary(self.jobs.Get, _plain(jobs_pb2.GetJobRequest(id=job_id)), _same)

    def _list_jobs(self, state: int, limit: int) -> Unary[list[jobs_pb2.Job]]:
        request = jobs_pb2.ListJobsRequest(state=state, limit=limit)  # type: ignore[arg-type]
        return Unary(self.jobs.List, _plain(request), lambda r: list(r.jobs))

    def _cancel_job(self, job_id: str) -> Unary[jobs_pb2.Job]:
        return Unary(self.jobs.Cancel, _plain(jobs_pb2.CancelJobRequest(id=job_id)), _same)

    def _watch_request(self, job_id: str) -> jobs_pb2.WatchJobRequest:
        return jobs_pb2.WatchJobRequest(id=job_id)

"""Blocking and asyncio clients over one reused channel.

Deadlines on every unary call (``timeout``, else ``ClientConfig.timeout``; streams run without one
unless given ``timeout``), retries on UNAVAILABLE only (gRPC's own retry policy in the channel's
service config, with exponential backoff), and server errors raised as genoserve's error classes
with the server's message and ``google.rpc.BadRequest`` field violations.

``Client`` and ``AsyncClient`` have the same methods with the same parameters (the async ones
awaited, or iterated with ``async for``); requests are built and responses decoded once, in
``genoserve.client.base`` and ``genoserve.client.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

import grpc

from genoserve.client.base import (
    BaseClient,
    ClientConfig,
    Leases,
    Reconnect,
    Unary,
    channel_options,
    credentials,
    error_of,
    translate,
    variant_requests,
)
from genoserve.client.feed import RequestFeed
from genoserve.client.messages import (
    FINAL_JOB_STATES,
    STRANDS,
    Array,
    EmbedMessage,
    Examples,
    embed_request,
    infer_outputs,
    infer_stream_requests,
    masks_of,
    segment_request,
    sequences_request,
    variants_request,
)
from genoserve.client.messages import infer_request as _infer_request
from genoserve.core.errors import GenoserveError
from genoserve.v1 import (
    binding_pb2,
    embedding_pb2,
    jobs_pb2,
    models_pb2,
    segmentation_pb2,
    variants_pb2,
)

__all__ = [
    "FINAL_JOB_STATES",
    "STRANDS",
    "AsyncClient",
    "Client",
    "ClientConfig",
    "_infer_request",
    "embed_request",
    "masks_of",
    "segment_request",
    "translate",
    "variants_request",
]

R = TypeVar("R")
#: One InferStream answer: the request's number (its place in the inputs given, from 0) and its
#: outputs, or the error that request alone failed with.
StreamAnswer = tuple[int, dict[str, Array] | GenoserveError]


async def _responses(call: Any) -> AsyncGenerator[Any, None]:
    """A grpc.aio stream call's responses; its failure as a genoserve error; the call cancelled
    when the caller stops early (iterate it under ``contextlib.aclosing``, so that is at once)."""
    try:
        async for response in call:
            yield response
    except grpc.RpcError as exc:
        raise translate(exc) from exc
    finally:
        call.cancel()


def _stream_answer(answer: models_pb2.InferStreamResponse) -> StreamAnswer:
    number = int(answer.response.id)
    if answer.HasField("error"):
        return number, error_of(answer.error.code, answer.error.message)
    return number, infer_outputs(answer.response)


class Client(BaseClient):
    """Blocking client. Reuse one instance: it holds one channel. Use as a context manager."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        config = self._config(address, kwargs)
        if config.secure:
            channel = grpc.secure_channel(config.address, credentials(config), channel_options(config))
        else:
            channel = grpc.insecure_channel(config.address, channel_options(config))
        super().__init__(channel, config)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    def _unary(self, rpc: Unary[R], timeout: float | None) -> R:
        with self._lease(rpc) as shared:
            response = self._call(rpc.method, rpc.build(shared), timeout)
        return rpc.decode(response)

    def _stream(self, method: Any, requests: Iterable[Any], timeout: float | None) -> Generator[Any, None, None]:
        """A stream call's responses; its failure as a genoserve error. When it ends (done,
        failed, or the caller stops early: the call is cancelled), nothing more is read from
        ``requests`` and gRPC's reading thread has left (``RequestFeed``)."""
        feed = RequestFeed(requests)
        call = method(feed, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()
            feed.close()

    # -- models ---------------------------------------------------------------------------------

    def list_models(self, family: str = "", timeout: float | None = None) -> list[models_pb2.ModelInfo]:
        """Every model version the server knows (of ``family``, "" for all), with readiness."""
        return self._unary(self._list_models(family), timeout)

    def get_model(self, name: str, version: str = "", timeout: float | None = None) -> models_pb2.ModelInfo:
        """Metadata of one model version ("" = the latest ready)."""
        return self._unary(self._get_model(name, version), timeout)

    def load_model(self, name: str, version: str = "", timeout: float | None = None) -> list[models_pb2.ModelInfo]:
        """Load a model (every version in the store, or ``version``) on a server whose
        ``runtime.model_control`` is explicit; the versions with their state."""
        return self._unary(self._load_model(name, version), timeout)

    def unload_model(self, name: str, version: str = "", timeout: float | None = None) -> list[str]:
        """Stop serving a model (every version, or ``version``); returns once its running
        requests have finished. The versions unloaded."""
        return self._unary(self._unload_model(name, version), timeout)

    def repository_index(self, timeout: float | None = None) -> list[models_pb2.RepositoryIndexResponse.Entry]:
        """Every model version in the server's model store, loaded or not."""
        return self._unary(self._repository_index(), timeout)

    def infer(
        self, model: str, inputs: Mapping[str, Array], version: str = "", timeout: float | None = None
    ) -> dict[str, Array]:
        """Run ``model`` on ``{input name: array}`` (batch first); returns ``{output name: array}``."""
        return self._unary(self._infer(model, inputs, version), timeout)

    def infer_stream(self, model: str, inputs: Iterable[Mapping[str, Array]], version: str = "",
                     timeout: float | None = None) -> Iterator[StreamAnswer]:  # fmt: skip
        """Models/InferStream, for many small requests: each mapping of ``inputs`` is one request,
        run concurrently on the server so that its batcher groups them. Answers come as each
        finishes, not in order: ``(number, outputs)``, number being the request's place in
        ``inputs`` from 0, or ``(number, error)`` for a request that failed alone (the stream goes
        on). Tensors go on the channel. No deadline unless ``timeout`` is given."""
        answers = self._stream(self.models.InferStream, infer_stream_requests(model, inputs, version), timeout)
        with contextlib.closing(answers):
            for answer in answers:
                yield _stream_answer(answer)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN for ``service`` ("" is the whole server)."""
        return self._unary(self._check_health(service), timeout)

    # -- sequence binding -----------------------------------------------------------------------

    def predict_sequences(self, model: str, sequences: Sequence[tuple[str, str]], strand: str = "",
                          crop: bool = False, version: str = "", timeout: float | None = None
                          ) -> binding_pb2.PredictResponse:  # fmt: skip
        """Score ``(id, bases)`` pairs; ``strand`` forward|max|mean ("" = the model's default)."""
        return self._unary(self._predict_sequences(model, sequences, strand, crop, version), timeout)

    def predict_stream(self, model: str, batches: Iterable[Sequence[tuple[str, str]]], strand: str = "",
                       crop: bool = False, version: str = "", timeout: float | None = None
                       ) -> Iterator[binding_pb2.PredictResponse]:  # fmt: skip
        """SequenceBinding/PredictStream: one request per batch of ``(id, bases)`` pairs, handled
        several at once on the server; one response per batch, in order. A bad batch ends the
        stream with its error (naming ``batch N``). No deadline unless ``timeout`` is given."""
        requests = (sequences_request(model, batch, strand, crop, version) for batch in batches)
        yield from self._stream(self.binding.PredictStream, requests, timeout)

    def score_variants(self, model: str, variants: Sequence[binding_pb2.Variant], reference: str = "",
                       strand: str = "", version: str = "", timeout: float | None = None
                       ) -> binding_pb2.ScoreVariantsResponse:  # fmt: skip
        """Effects (alt - ref) of variants on a reference registered on the server ("" = its default)."""
        return self._unary(self._score_variants(model, variants, reference, strand, version), timeout)

    def mutagenesis(self, model: str, sequence_id: str, bases: str, strand: str = "", crop: bool = False,
                    version: str = "", timeout: float | None = None) -> binding_pb2.MutagenesisResponse:  # fmt: skip
        """In-silico mutagenesis: the effect of every substitution at every position of one sequence."""
        return self._unary(self._mutagenesis(model, sequence_id, bases, strand, crop, version), timeout)

    # -- segmentation ---------------------------------------------------------------------------

    def segment(self, model: str, image: Array | bytes, timeout: float | None = None,
                **options: Any) -> segmentation_pb2.SegmentResponse:  # fmt: skip
        """Segment one image (array [H, W] / [H, W, C], or TIFF/PNG bytes). ``options``: channels,
        diameter, cellprob_threshold, flow_threshold, min_size, niter, return_flows, version.
        ``masks_of(response)`` gives the label mask as an array."""
        return self._unary(self._segment(model, image, options), timeout)

    # -- single-cell embedding ------------------------------------------------------------------

    def embed(self, model: str, gene_names: Sequence[str], counts: Any, cell_ids: Sequence[str] = (),
              batch_labels: Sequence[str] = (), min_gene_overlap: float = 0.0, not_raw_counts: bool = False,
              return_variances: bool = False, version: str = "", timeout: float | None = None
              ) -> embedding_pb2.EmbedResponse:  # fmt: skip
        """Embed a cells x genes matrix: a CSR matrix (anything with ``indptr``, ``indices``,
        ``data``, e.g. ``scipy.sparse.csr_matrix``) or a dense array. Genes are matched by name.
        ``tensor_codec.to_numpy(response.latent, "latent")`` gives float32 [n_cells, n_latent]."""
        rpc = self._embed_unary(model, gene_names, counts, cell_ids, batch_labels, min_gene_overlap, not_raw_counts,
                                return_variances, version)  # fmt: skip
        return self._unary(rpc, timeout)

    def embed_stream(self, requests: Iterable[EmbedMessage], timeout: float | None = None
                     ) -> Iterator[embedding_pb2.EmbedResponse]:  # fmt: skip
        """EmbedStream: one response per request (row chunk), in order; build requests with
        ``embed_request`` (later ones may leave model and gene names empty), or give messages.
        No deadline unless ``timeout`` is given."""
        yield from self._stream(self._embed_stream, requests, timeout)

    # -- variant calling ------------------------------------------------------------------------

    def call_variants(self, examples: Examples, model: str = "", version: str = "", sample_name: str = "",
                      timeout: float | None = None) -> variants_pb2.CallVariantsResponse:  # fmt: skip
        """Genotype probabilities per pileup example and the calls of complete sites.

        ``examples``: the family's ``PileupExample`` objects (numpy pileups, e.g. from
        ``make_examples`` or ``read_examples``; sent as one batched tensor, the fast path), or
        ``variants_pb2.PileupExample`` messages (``genoserve.api.codecs.variants.pileup_example``,
        or ``tf_example`` bytes). ``model`` "" picks the server's variants model for the examples'
        channel count.
        """
        return self._unary(self._call_variants_unary(examples, model, version, sample_name), timeout)

    def call_variants_stream(self, batches: Iterable[Examples], model: str = "", version: str = "",
                             sample_name: str = "", timeout: float | None = None
                             ) -> Iterator[variants_pb2.CallVariantsResponse]:  # fmt: skip
        """One response per batch, in order (multi-allelic sites may span batches). Batches are
        as ``call_variants``' ``examples``; with ``shared_memory``, each batch's pileups stay in
        shared memory until its response has arrived. No deadline unless ``timeout`` is given."""
        leases = Leases(self.shared_memory)
        requests = variant_requests(batches, model, version, sample_name, leases)
        responses = self._stream(self._call_variants_stream, requests, timeout)
        try:
            for response in responses:
                leases.answered()
                yield response
        finally:
            responses.close()  # the call over and its reader gone before the leases go back
            leases.release_all()

    # -- jobs -----------------------------------------------------------------------------------

    def submit_job(self, kind: str, inputs: list[str], output_dir: str, params: Mapping[str, str] | None = None,
                   timeout: float | None = None) -> jobs_pb2.Job:  # fmt: skip
        """Submit a bulk job; paths must be visible to the server (absolute paths are safest)."""
        return self._unary(self._submit_job(kind, inputs, output_dir, params), timeout)

    def get_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        """One job: state, shard and item counts, error, outputs."""
        return self._unary(self._get_job(job_id), timeout)

    def list_jobs(self, state: int = 0, limit: int = 50, timeout: float | None = None) -> list[jobs_pb2.Job]:
        """The caller's jobs, newest first (``state`` a ``jobs_pb2.JobState``, 0 for all)."""
        return self._unary(self._list_jobs(state, limit), timeout)

    def cancel_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        """Cancel a job (idempotent): pending shards are dropped, running ones stop."""
        return self._unary(self._cancel_job(job_id), timeout)

    def watch_job(self, job_id: str, reconnect_for: float = 120.0) -> Iterator[jobs_pb2.JobEvent]:
        """Progress events until the job ends. The stream is re-attached whenever it breaks or
        ends early (server restart, a new replica); gives up after ``reconnect_for`` seconds
        without a working connection."""
        reconnect = Reconnect(job_id, reconnect_for)
        while True:
            failure: grpc.RpcError | None = None
            try:
                for event in self.jobs.Watch(self._watch_request(job_id), metadata=self._metadata):
                    reconnect.connected()
                    yield event
                    if event.job.state in FINAL_JOB_STATES:
                        return
            except grpc.RpcError as exc:
                failure = exc
            time.sleep(reconnect.broken(failure))

    def close(self) -> None:
        self.channel.close()
        if self.shared_memory is not None:
            self.shared_memory.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(BaseClient):
    """asyncio client with the same methods as ``Client``, awaited (streams: ``async for``).
    One channel, reused; use as an async context manager."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        config = self._config(address, kwargs)
        if config.secure:
            channel = grpc.aio.secure_channel(config.address, credentials(config), channel_options(config))
        else:
            channel = grpc.aio.insecure_channel(config.address, channel_options(config))
        super().__init__(channel, config)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise translate(exc) from exc

    async def _unary(self, rpc: Unary[R], timeout: float | None) -> R:
        with self._lease(rpc) as shared:
            response = await self._call(rpc.method, rpc.build(shared), timeout)
        return rpc.decode(response)

    # -- models ---------------------------------------------------------------------------------

    async def list_models(self, family: str = "", timeout: float | None = None) -> list[models_pb2.ModelInfo]:
        """As ``Client.list_models``."""
        return await self._unary(self._list_models(family), timeout)

    async def get_model(self, name: str, version: str = "", timeout: float | None = None) -> models_pb2.ModelInfo:
        """As ``Client.get_model``."""
        return await self._unary(self._get_model(name, version), timeout)

    async def load_model(self, name: str, version: str = "", timeout: float | None = None
                         ) -> list[models_pb2.ModelInfo]:  # fmt: skip
        """As ``Client.load_model``."""
        return await self._unary(self._load_model(name, version), timeout)

    async def unload_model(self, name: str, version: str = "", timeout: float | None = None) -> list[str]:
        """As ``Client.unload_model``."""
        return await self._unary(self._unload_model(name, version), timeout)

    async def repository_index(self, timeout: float | None = None) -> list[models_pb2.RepositoryIndexResponse.Entry]:
        """As ``Client.repository_index``."""
        return await self._unary(self._repository_index(), timeout)

    async def infer(
        self, model: str, inputs: Mapping[str, Array], version: str = "", timeout: float | None = None
    ) -> dict[str, Array]:
        """As ``Client.infer``."""
        return await self._unary(self._infer(model, inputs, version), timeout)

    async def infer_stream(self, model: str, inputs: Iterable[Mapping[str, Array]] | AsyncIterable[Mapping[str, Array]],
                           version: str = "", timeout: float | None = None
                           ) -> AsyncIterator[StreamAnswer]:  # fmt: skip
        """As ``Client.infer_stream``; ``inputs`` may be a plain or an async iterable."""

        async def requests() -> AsyncIterator[models_pb2.InferRequest]:
            if isinstance(inputs, AsyncIterable):
                number = 0
                async for arrays in inputs:
                    request = _infer_request(model, arrays, version)
                    request.id = str(number)
                    number += 1
                    yield request
            else:
                for request in infer_stream_requests(model, inputs, version):
                    yield request

        async with contextlib.aclosing(
            _responses(self.models.InferStream(requests(), timeout=timeout, metadata=self._metadata))
        ) as responses:
            async for answer in responses:
                yield _stream_answer(answer)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        """As ``Client.health``."""
        return await self._unary(self._check_health(service), timeout)

    # -- sequence binding -----------------------------------------------------------------------

    async def predict_sequences(self, model: str, sequences: Sequence[tuple[str, str]], strand: str = "",
                                crop: bool = False, version: str = "", timeout: float | None = None
                                ) -> binding_pb2.PredictResponse:  # fmt: skip
        """As ``Client.predict_sequences``."""
        return await self._unary(self._predict_sequences(model, sequences, strand, crop, version), timeout)

    async def predict_stream(self, model: str,
                             batches: Iterable[Sequence[tuple[str, str]]] | AsyncIterable[Sequence[tuple[str, str]]],
                             strand: str = "", crop: bool = False, version: str = "", timeout: float | None = None
                             ) -> AsyncIterator[binding_pb2.PredictResponse]:  # fmt: skip
        """As ``Client.predict_stream``; ``batches`` may be a plain or an async iterable."""

        async def requests() -> AsyncIterator[binding_pb2.PredictRequest]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield sequences_request(model, batch, strand, crop, version)
            else:
                for batch in batches:
                    yield sequences_request(model, batch, strand, crop, version)

        async with contextlib.aclosing(
            _responses(self.binding.PredictStream(requests(), timeout=timeout, metadata=self._metadata))
        ) as responses:
            async for response in responses:
                yield response

    async def score_variants(self, model: str, variants: Sequence[binding_pb2.Variant], reference: str = "",
                             strand: str = "", version: str = "", timeout: float | None = None
                             ) -> binding_pb2.ScoreVariantsResponse:  # fmt: skip
        """As ``Client.score_variants``."""
        return await self._unary(self._score_variants(model, variants, reference, strand, version), timeout)

    async def mutagenesis(self, model: str, sequence_id: str, bases: str, strand: str = "", crop: bool = False,
                          version: str = "", timeout: float | None = None
                          ) -> binding_pb2.MutagenesisResponse:  # fmt: skip
        """As ``Client.mutagenesis``."""
        return await self._unary(self._mutagenesis(model, sequence_id, bases, strand, crop, version), timeout)

    # -- segmentation ---------------------------------------------------------------------------

    async def segment(self, model: str, image: Array | bytes, timeout: float | None = None,
                      **options: Any) -> segmentation_pb2.SegmentResponse:  # fmt: skip
        """As ``Client.segment``."""
        return await self._unary(self._segment(model, image, options), timeout)

    # -- single-cell embedding ------------------------------------------------------------------

    async def embed(self, model: str, gene_names: Sequence[str], counts: Any, cell_ids: Sequence[str] = (),
                    batch_labels: Sequence[str] = (), min_gene_overlap: float = 0.0, not_raw_counts: bool = False,
                    return_variances: bool = False, version: str = "", timeout: float | None = None
                    ) -> embedding_pb2.EmbedResponse:  # fmt: skip
        """As ``Client.embed``."""
        rpc = self._embed_unary(model, gene_names, counts, cell_ids, batch_labels, min_gene_overlap, not_raw_counts,
                                return_variances, version)  # fmt: skip
        return await self._unary(rpc, timeout)

    async def embed_stream(self, requests: Iterable[EmbedMessage] | AsyncIterable[EmbedMessage],
                           timeout: float | None = None) -> AsyncIterator[embedding_pb2.EmbedResponse]:  # fmt: skip
        """As ``Client.embed_stream``: ``async for response in client.embed_stream(requests)``;
        ``requests`` may be a plain or an async iterable of ``embed_request(...)`` results."""
        async with contextlib.aclosing(
            _responses(self._embed_stream(requests, timeout=timeout, metadata=self._metadata))
        ) as responses:
            async for response in responses:
                yield response

    # -- variant calling ------------------------------------------------------------------------

    async def call_variants(self, examples: Examples, model: str = "", version: str = "", sample_name: str = "",
                            timeout: float | None = None) -> variants_pb2.CallVariantsResponse:  # fmt: skip
        """As ``Client.call_variants``."""
        return await self._unary(self._call_variants_unary(examples, model, version, sample_name), timeout)

    async def call_variants_stream(self, batches: Iterable[Examples] | AsyncIterable[Examples], model: str = "",
                                   version: str = "", sample_name: str = "", timeout: float | None = None
                                   ) -> AsyncIterator[variants_pb2.CallVariantsResponse]:  # fmt: skip
        """As ``Client.call_variants_stream``: an async iterator of responses, one per batch, in
        order. ``batches`` may be a plain or an async iterable."""
        leases = Leases(self.shared_memory)

        async def requests() -> AsyncIterator[bytes]:
            if isinstance(batches, AsyncIterable):
                async for batch in batches:
                    yield variants_request(batch, model, version, sample_name, leases.take())
            else:
                for request in variant_requests(batches, model, version, sample_name, leases):
                    yield request

        call = self._call_variants_stream(requests(), timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                leases.answered()
                yield response
        except grpc.RpcError as exc:
            raise translate(exc) from exc
        finally:
            call.cancel()
            leases.release_all()

    # -- jobs -----------------------------------------------------------------------------------

    async def submit_job(self, kind: str, inputs: list[str], output_dir: str,
                         params: Mapping[str, str] | None = None, timeout: float | None = None
                         ) -> jobs_pb2.Job:  # fmt: skip
        """As ``Client.submit_job``."""
        return await self._unary(self._submit_job(kind, inputs, output_dir, params), timeout)

    async def get_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        """As ``Client.get_job``."""
        return await self._unary(self._get_job(job_id), timeout)

    async def list_jobs(self, state: int = 0, limit: int = 50, timeout: float | None = None) -> list[jobs_pb2.Job]:
        """As ``Client.list_jobs``."""
        return await self._unary(self._list_jobs(state, limit), timeout)

    async def cancel_job(self, job_id: str, timeout: float | None = None) -> jobs_pb2.Job:
        """As ``Client.cancel_job``."""
        return await self._unary(self._cancel_job(job_id), timeout)

    async def watch_job(self, job_id: str, reconnect_for: float = 120.0) -> AsyncIterator[jobs_pb2.JobEvent]:
        """As ``Client.watch_job``: ``async for event in client.watch_job(job_id)``."""
        reconnect = Reconnect(job_id, reconnect_for)
        while True:
            failure: grpc.RpcError | None = None
            call = self.jobs.Watch(self._watch_request(job_id), metadata=self._metadata)
            try:
                async for event in call:
                    reconnect.connected()
                    yield event
                    if event.job.state in FINAL_JOB_STATES:
                        return
            except grpc.RpcError as exc:
                failure = exc
            finally:
                call.cancel()
            await asyncio.sleep(reconnect.broken(failure))

    async def close(self) -> None:
        await self.channel.close()
        if self.shared_memory is not None:
            self.shared_memory.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

"""gRPC server bootstrap: servicers, health, reflection, interceptors, TLS, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from genoserve.api.auth import TokenTable
from genoserve.api.health import DrainingHealthServicer, HealthReporter
from genoserve.api.interceptors import BearerAuth, ErrorsAndMetrics, UndecodableRequests
from genoserve.api.servicers.binding import SequenceBindingServicer
from genoserve.api.servicers.embedding import CellEmbeddingServicer
from genoserve.api.servicers.embedding import add_to_server as add_cell_embedding
from genoserve.api.servicers.jobs import JobsServicer
from genoserve.api.servicers.models import ModelsServicer
from genoserve.api.servicers.open_inference import OpenInferenceServicer
from genoserve.api.servicers.segmentation import SegmentationServicer
from genoserve.api.servicers.variants import VariantCallingServicer
from genoserve.api.servicers.variants import add_to_server as add_variant_calling
from genoserve.api.shared_memory import SharedMemoryReader
from genoserve.binding.variants import ReferenceGenome
from genoserve.core.settings import ServerSettings, Settings
from genoserve.inference import open_inference_pb2_grpc
from genoserve.jobs.celery_app import make_celery
from genoserve.jobs.service import JobService
from genoserve.jobs.store import open_store
from genoserve.runtime.live import LiveModels
from genoserve.v1 import (
    binding_pb2_grpc,
    jobs_pb2_grpc,
    models_pb2_grpc,
    segmentation_pb2_grpc,
)

log = logging.getLogger(__name__)


def channel_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    ms = 1000
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * ms)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5 * ms),
        ("grpc.http2.max_pings_without_data", 0),
        # Close connections after this age so clients behind a Kubernetes Service re-resolve.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * ms)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * ms)),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    assert tls.cert_file is not None
    assert tls.key_file is not None
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class GenoserveServer:
    """The online server. ``start`` binds and begins loading models in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = LiveModels(settings.runtime)
        self.store = open_store(settings.jobs.resolved_store_url)
        self.jobs = JobService(
            settings, self.store, make_celery(settings.jobs), self.repository.store, self.repository.latest_version
        )
        self.jobs_servicer = JobsServicer(self.jobs)
        # Reference genomes for ScoreVariants: a broken path fails the start, not the first request.
        self.references = {name: ReferenceGenome(name, path) for name, path in settings.binding.references.items()}
        # Tensors co-located clients leave in shared memory (opt-in: server.shared_memory).
        self.shared = SharedMemoryReader() if settings.server.shared_memory else None
        self.port = 0
        self.health_port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._loading: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._health: HealthReporter | None = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def _servicers(self) -> list[tuple[Any, Any, str | None]]:
        """(servicer, add_to_server function, family it needs) for every genoserve service."""
        return [
            (
                ModelsServicer(self.repository, self.shared, self.settings.server.auth),
                models_pb2_grpc.add_ModelsServicer_to_server,
                None,
            ),
            (
                OpenInferenceServicer(self.repository),
                open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                None,
            ),
            (self.jobs_servicer, jobs_pb2_grpc.add_JobsServicer_to_server, None),
            (
                SequenceBindingServicer(
                    self.repository, self.references, self.settings.binding.resolved_default, self.settings.binding
                ),
                binding_pb2_grpc.add_SequenceBindingServicer_to_server,
                "binding",
            ),
            (
                VariantCallingServicer(self.repository, self.settings.variants, self.shared),
                add_variant_calling,  # its own request deserializer (pileup pixels not copied)
                "variants",
            ),
            (
                SegmentationServicer(self.repository, self.settings.segmentation, self.settings.runtime, self.shared),
                segmentation_pb2_grpc.add_SegmentationServicer_to_server,
                "segmentation",
            ),
            (
                CellEmbeddingServicer(self.repository, self.shared, self.settings.embedding),
                add_cell_embedding,  # its own request deserializer (matrix values not copied)
                "embedding",
            ),
        ]

    async def start(self) -> int:
        server_settings = self.settings.server
        interceptors: list[grpc.aio.ServerInterceptor] = [ErrorsAndMetrics()]
        if server_settings.auth.enabled:
            assert server_settings.auth.tokens_file is not None
            interceptors.append(BearerAuth(TokenTable.load(server_settings.auth.tokens_file)))
        interceptors.append(UndecodableRequests())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=channel_options(server_settings),
            maximum_concurrent_rpcs=server_settings.max_concurrent_rpcs,
        )
        services: dict[str, str | None] = {}
        for servicer, add, family in self._servicers():
            add(servicer, server)
            services[servicer.SERVICE_NAME] = family
        health_servicer = DrainingHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self._health = HealthReporter(health_servicer, self.repository, services)
        names: Sequence[str] = [
            *services,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        address = f"{server_settings.host}:{server_settings.port}"
        credentials = server_credentials(server_settings)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        await self._health.update()  # everything NOT_SERVING until models load
        await server.start()
        self._server = server
        if server_settings.health_port:
            await self._start_health_server(health_servicer)
        log.info(
            "gRPC server listening on %s:%d (%s)",
            server_settings.host,
            self.port,
            "TLS" if credentials else "plaintext",
        )
        loop = asyncio.get_running_loop()
        self.repository.on_change(lambda: self._track(loop.create_task(self._health_update())))
        self._loading = loop.create_task(self._load())
        self._sweeper = loop.create_task(self._sweep())
        return self.port

    async def _start_health_server(self, servicer: DrainingHealthServicer) -> None:
        """A second, plaintext server with grpc.health.v1 only (the same statuses), for probes."""
        server_settings = self.settings.server
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, health_server)
        self.health_port = health_server.add_insecure_port(f"{server_settings.host}:{server_settings.health_port}")
        await health_server.start()
        self._health_server = health_server
        log.info("health-only port %s:%d (plaintext)", server_settings.host, self.health_port)

    async def _sweep(self) -> None:
        """Recover lost shards and stalled jobs (see genoserve.jobs.lifecycle.sweep)."""
        interval = self.settings.jobs.sweep_interval_s
        while True:
            try:
                await asyncio.to_thread(self.jobs.sweep_once)
            except Exception:
                log.exception("job sweep failed")
            await asyncio.sleep(interval)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _health_update(self) -> None:
        if self._health is not None:
            await self._health.update()

    async def _load(self) -> None:
        try:
            await self.repository.load()
        except Exception:
            log.exception("loading the model repository failed")
        await self._health_update()

    async def wait_until_loaded(self) -> None:
        if self._loading is not None:
            await self._loading

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, stop accepting, drain in-flight RPCs up to ``grace`` s, unload."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.settings.server.grace_period_s if grace is None else grace
        log.info("shutting down: draining in-flight requests for up to %.1f s", grace)
        if self._health is not None:
            await self._health.shutdown()
        self.jobs_servicer.close()
        for task in (self._loading, self._sweeper):
            if task is not None and not task.done():
                task.cancel()
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.repository.close(timeout=1.0)
        self.jobs.app.close()
        self.store.close()
        for reference in self.references.values():
            reference.close()
        self._stopped.set()
        log.info("server stopped")

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    server = GenoserveServer(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopping.append(loop.create_task(server.stop())) if not stopping else None)
    await server.wait_for_termination()

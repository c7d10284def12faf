"""grpc.health.v1 per gRPC service: NOT_SERVING until its models are ready, and during shutdown."""

from __future__ import annotations

from collections.abc import Mapping

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from genoserve.runtime.repository import ModelRepository

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Keeps the health servicer in step with the model repository.

    ``services`` maps each gRPC service name to the model family it needs (None: it needs the
    repository to have finished loading, e.g. ``Models``). The overall status ("") is SERVING once
    loading is over and at least one model is ready.
    """

    def __init__(
        self, servicer: HealthServicer, repository: ModelRepository, services: Mapping[str, str | None]
    ) -> None:
        self.servicer = servicer
        self.repository = repository
        self.services = dict(services)
        self.shutting_down = False

    def statuses(self) -> dict[str, int]:
        if self.shutting_down:
            return {name: NOT_SERVING for name in ["", *self.services]}
        settled = self.repository.all_settled
        families = self.repository.families_ready()
        any_ready = any(s.ready for s in self.repository.statuses())
        out = {"": SERVING if settled and any_ready else NOT_SERVING}
        for name, family in self.services.items():
            ok = settled if family is None else settled and families.get(family, False)
            out[name] = SERVING if ok else NOT_SERVING
        return out

    async def update(self) -> None:
        for name, status in self.statuses().items():
            await self.servicer.set(name, status)

    async def shutdown(self) -> None:
        self.shutting_down = True
        await self.update()

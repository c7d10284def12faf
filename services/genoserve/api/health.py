"""grpc.health.v1 per gRPC service: NOT_SERVING until its models are ready, and during shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from genoserve.runtime.live import LiveModels

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Health entry for liveness probes: SERVING while the process answers, also while models load
#: or when they failed (a restart would not fix a bad model file); NOT_SERVING once shutting down.
LIVENESS = "liveness"


class DrainingHealthServicer(HealthServicer):  # type: ignore[misc]
    """grpc_health's servicer, but Watch streams end (status OK) once shutdown has told them
    NOT_SERVING, so that an open Watch does not hold the process for the whole grace period."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: set[asyncio.Task[Any]] = set()
        self._ending = False

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._watches.add(task)
        try:
            await super().Watch(request, context)
        except asyncio.CancelledError:
            if not self._ending:
                raise
        finally:
            self._watches.discard(task)

    async def end_watches(self, settle_s: float = 0.1) -> None:
        """After NOT_SERVING was set: give watchers ``settle_s`` to send it, then end their streams."""
        if not self._watches:
            return
        await asyncio.sleep(settle_s)
        self._ending = True
        for task in list(self._watches):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._watches, return_exceptions=True)


class HealthReporter:
    """Keeps the health servicer in step with the model repository.

    ``services`` maps each gRPC service name to the model family it needs (None: it needs the
    repository to have finished loading, e.g. ``Models``). The overall status ("") is SERVING once
    loading is over and at least one model is ready; ``liveness`` is SERVING until shutdown.
    """

    def __init__(
        self, servicer: DrainingHealthServicer, repository: LiveModels, services: Mapping[str, str | None]
    ) -> None:
        self.servicer = servicer
        self.repository = repository
        self.services = dict(services)
        self.shutting_down = False

    def statuses(self) -> dict[str, int]:
        if self.shutting_down:
            return {name: NOT_SERVING for name in ["", LIVENESS, *self.services]}
        settled = self.repository.all_settled
        families = self.repository.families_ready()
        any_ready = any(s.ready for s in self.repository.statuses())
        out = {"": SERVING if settled and any_ready else NOT_SERVING, LIVENESS: SERVING}
        for name, family in self.services.items():
            ok = settled if family is None else settled and families.get(family, False)
            out[name] = SERVING if ok else NOT_SERVING
        return out

    async def update(self) -> None:
        for name, status in self.statuses().items():
            await self.servicer.set(name, status)

    async def shutdown(self) -> None:
        """Everything NOT_SERVING for good; open Watch streams see it and end."""
        self.shutting_down = True
        await self.update()
        await self.servicer.enter_graceful_shutdown()
        await self.servicer.end_watches()
